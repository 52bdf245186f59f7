//! What each worker connection did, counted in memory: solutions accepted and
//! refused as they arrive, and valid and invalid as the solution processors
//! judge them (their tallies come back on the `verdict` topic, one event per
//! batch and worker server, not one per solution).
//!
//! Cheap on the hot path: a solution accepted costs an atomic add and an
//! uncontended lock of its own connection's minute ring; nothing takes the
//! server's registry lock. Each connection's cost is fixed: a few counters and
//! [`MINUTES`] one-minute buckets.

use crate::pipeline::views::{Rates, WorkerStatsView};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// How many one-minute buckets a connection keeps: the longest rate window.
pub const MINUTES: usize = 60;

/// Why a solution was refused at the door (before the queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a solution frame, or a field over its limit.
    BadFrame,
    /// The queue did not take it.
    Queue,
}

/// Why a solution the queue took was judged invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Its nonce was stored before.
    Duplicate,
    /// A policy's `validate-solution` refused it.
    Policy,
    /// Its `task_id` names no stored job.
    UnknownJob,
    /// The message could not be used at all.
    Malformed,
}

impl Refused {
    const ALL: [Refused; 2] = [Refused::BadFrame, Refused::Queue];

    fn label(self) -> &'static str {
        match self {
            Refused::BadFrame => "bad_frame",
            Refused::Queue => "queue",
        }
    }
}

impl Invalid {
    /// Every reason, in the order of a tally's counts.
    pub const ALL: [Invalid; 4] = [Invalid::Duplicate, Invalid::Policy, Invalid::UnknownJob, Invalid::Malformed];

    /// The reason as the API names it.
    pub fn label(self) -> &'static str {
        match self {
            Invalid::Duplicate => "duplicate",
            Invalid::Policy => "policy",
            Invalid::UnknownJob => "unknown_job",
            Invalid::Malformed => "malformed",
        }
    }
}

/// Solutions per one-minute bucket.
#[derive(Clone, Copy, Default)]
struct Minute {
    /// Minutes since the Unix epoch this bucket counts.
    at: u64,
    accepted: u32,
    valid: u32,
}

/// The counters of one worker connection.
pub struct WorkerStats {
    connected_ms: i64,
    accepted: AtomicU64,
    refused: [AtomicU64; 2],
    valid: AtomicU64,
    invalid: [AtomicU64; 4],
    /// Milliseconds since the epoch; 0: none yet.
    last_valid_ms: AtomicI64,
    minutes: Mutex<[Minute; MINUTES]>,
}

impl WorkerStats {
    /// Counters of a connection that opened at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        WorkerStats {
            connected_ms: now_ms,
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            valid: AtomicU64::new(0),
            invalid: Default::default(),
            last_valid_ms: AtomicI64::new(0),
            minutes: Mutex::new([Minute::default(); MINUTES]),
        }
    }

    /// A solution the queue took, at `now_ms`.
    pub fn accepted(&self, now_ms: i64) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.bucket(now_ms, |m| m.accepted = m.accepted.saturating_add(1));
    }

    /// A solution refused before the queue.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A batch's verdicts on this connection's solutions, told at `now_ms`:
    /// `valid`, and the invalid ones by reason in [`Invalid::ALL`]'s order.
    pub fn judged(&self, valid: u32, invalid: &[u32], now_ms: i64) {
        if valid > 0 {
            self.valid.fetch_add(u64::from(valid), Ordering::Relaxed);
            self.last_valid_ms.fetch_max(now_ms, Ordering::Relaxed);
            self.bucket(now_ms, |m| m.valid = m.valid.saturating_add(valid));
        }
        for (counter, n) in self.invalid.iter().zip(invalid) {
            counter.fetch_add(u64::from(*n), Ordering::Relaxed);
        }
    }

    fn bucket(&self, now_ms: i64, add: impl FnOnce(&mut Minute)) {
        let minute = (now_ms.max(0) / 60_000) as u64;
        let mut minutes = self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = &mut minutes[(minute % MINUTES as u64) as usize];
        if slot.at != minute {
            *slot = Minute { at: minute, ..Minute::default() };
        }
        add(slot);
    }

    /// The counters at `now_ms`; silent when connected `silent_after_ms` and no
    /// valid solution within it.
    pub fn view(&self, now_ms: i64, silent_after_ms: i64) -> WorkerStatsView {
        let counts = |labels: &mut dyn Iterator<Item = &'static str>, counters: &[AtomicU64]| {
            labels.zip(counters).map(|(l, c)| (l.to_string(), c.load(Ordering::Relaxed))).collect()
        };
        let last_valid_ms = self.last_valid_ms.load(Ordering::Relaxed);
        let minute = (now_ms.max(0) / 60_000) as u64;
        let minutes = *self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let age_minutes = ((now_ms - self.connected_ms).max(0) as f64 / 60_000.0).max(1.0);
        let rate = |window: u64, of: fn(&Minute) -> u32| {
            let sum: u64 =
                minutes.iter().filter(|m| m.at + window > minute && m.at <= minute).map(|m| u64::from(of(m))).sum();
            let per = age_minutes.min(window as f64);
            (sum as f64 / per * 100.0).round() / 100.0
        };
        WorkerStatsView {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: counts(&mut Refused::ALL.iter().map(|r| r.label()), &self.refused),
            valid: self.valid.load(Ordering::Relaxed),
            invalid: counts(&mut Invalid::ALL.iter().map(|r| r.label()), &self.invalid),
            last_valid_at: chrono::DateTime::from_timestamp_millis(last_valid_ms).filter(|_| last_valid_ms > 0),
            accepted_per_minute: Rates { m5: rate(5, |m| m.accepted), m60: rate(60, |m| m.accepted) },
            valid_per_minute: Rates { m5: rate(5, |m| m.valid), m60: rate(60, |m| m.valid) },
            silent: self.silent(now_ms, silent_after_ms),
        }
    }

    /// Whether the connection is silent at `now_ms` (see [`view`](Self::view)).
    pub fn silent(&self, now_ms: i64, silent_after_ms: i64) -> bool {
        let last_valid_ms = self.last_valid_ms.load(Ordering::Relaxed);
        let quiet_since = if last_valid_ms > 0 { last_valid_ms } else { self.connected_ms };
        now_ms - quiet_since >= silent_after_ms
    }

    /// Valid and invalid solutions so far.
    pub fn judged_totals(&self) -> (u64, u64) {
        let invalid = self.invalid.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (self.valid.load(Ordering::Relaxed), invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn counts_and_rates_follow_what_was_sent() {
        let start = 1_000 * MIN;
        let stats = WorkerStats::new(start);
        for i in 0..10 {
            stats.accepted(start + i * MIN / 2);
        }
        stats.judged(6, &[2, 1, 1, 0], start + 5 * MIN - 1);
        stats.refused(Refused::BadFrame);
        let view = stats.view(start + 5 * MIN - 1, 30 * MIN);
        assert_eq!((view.accepted, view.valid), (10, 6));
        assert_eq!(view.invalid["duplicate"] + view.invalid["policy"] + view.invalid["unknown_job"], 4);
        assert_eq!(view.refused["bad_frame"], 1);
        // 10 in 5 minutes: 2 a minute over both windows (it is only 5 minutes old).
        assert_eq!((view.accepted_per_minute.m5, view.accepted_per_minute.m60), (2.0, 2.0));
        assert_eq!(view.valid_per_minute.m5, 1.2);
        assert!(!view.silent);
        // An hour later nothing is in the 5-minute window and it has gone silent.
        let later = stats.view(start + 40 * MIN, 30 * MIN);
        assert_eq!(later.accepted_per_minute.m5, 0.0);
        assert_eq!(later.accepted_per_minute.m60, 0.25, "10 over its 40 minutes");
        assert!(later.silent && stats.silent(start + 40 * MIN, 30 * MIN));
    }

    #[test]
    fn a_worker_with_no_valid_solution_goes_silent_after_the_threshold() {
        let stats = WorkerStats::new(0);
        assert!(!stats.silent(29 * MIN, 30 * MIN));
        assert!(stats.silent(30 * MIN, 30 * MIN));
        stats.judged(1, &[0; 4], 31 * MIN);
        assert!(!stats.silent(60 * MIN, 30 * MIN));
        assert!(stats.view(0, 30 * MIN).last_valid_at.is_some());
    }
}
