//! Collapses a client library's repeated log lines: while a broker is down,
//! librdkafka reports the same refused connection many times a second. The first
//! line of a kind is logged at once (the change of state); repeats within the
//! window are counted, and one summary line per window says how many there were.
//! A kind quiet for two windows is forgotten, so its return is logged at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::Level;

/// Repeats of a kind of line within this long are counted, not logged.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Lines seen recently, by kind.
pub struct LogThrottle {
    window: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    level: Level,
    source: String,
    /// The latest line of this kind, for the summary.
    latest: String,
    /// When this kind was last logged (a line or a summary).
    logged_at: Instant,
    /// Lines of this kind not logged since then.
    suppressed: u64,
}

/// One throttle per process for librdkafka's callbacks, flushed by a thread
/// that wakes once a window.
pub fn librdkafka() -> Arc<LogThrottle> {
    static THROTTLE: OnceLock<Arc<LogThrottle>> = OnceLock::new();
    THROTTLE
        .get_or_init(|| {
            let throttle = Arc::new(LogThrottle::new(WINDOW));
            let flushed = Arc::downgrade(&throttle);
            let _ = std::thread::Builder::new().name("log-throttle".into()).spawn(move || loop {
                std::thread::sleep(WINDOW);
                match flushed.upgrade() {
                    Some(throttle) => throttle.flush(Instant::now()),
                    None => return,
                }
            });
            throttle
        })
        .clone()
}

impl LogThrottle {
    /// A throttle that logs each kind of line at most once per `window`.
    pub fn new(window: Duration) -> Self {
        LogThrottle { window, seen: Mutex::new(HashMap::new()) }
    }

    /// Logs `message` from `source` unless a line of its kind was logged within
    /// the window. Says whether it was logged.
    pub fn log(&self, level: Level, source: &str, message: &str) -> bool {
        self.log_at(level, source, message, Instant::now())
    }

    fn log_at(&self, level: Level, source: &str, message: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = kind(source, message);
        match seen.get_mut(&key) {
            Some(earlier) if now.duration_since(earlier.logged_at) < self.window => {
                earlier.suppressed += 1;
                earlier.latest.clear();
                earlier.latest.push_str(message);
                false
            }
            Some(earlier) => {
                emit(level, source, message, earlier.suppressed, now.duration_since(earlier.logged_at));
                earlier.logged_at = now;
                earlier.suppressed = 0;
                true
            }
            None => {
                emit(level, source, message, 0, Duration::ZERO);
                let source = source.to_owned();
                let latest = message.to_owned();
                seen.insert(key, Seen { level, source, latest, logged_at: now, suppressed: 0 });
                true
            }
        }
    }

    /// Logs a summary for every kind with lines held back for a whole window, and
    /// forgets kinds quiet for two.
    pub fn flush(&self, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|_, kind| {
            let since = now.duration_since(kind.logged_at);
            if since < self.window {
                return true;
            }
            if kind.suppressed > 0 {
                emit(kind.level, &kind.source, &kind.latest, kind.suppressed, since);
                kind.logged_at = now;
                kind.suppressed = 0;
                return true;
            }
            since < self.window * 2
        });
    }

    /// Kinds currently remembered (for tests).
    pub fn kinds(&self) -> usize {
        self.seen.lock().map(|seen| seen.len()).unwrap_or_default()
    }
}

/// Lines of one kind differ only in numbers (ports, counts, milliseconds) and in
/// librdkafka's parenthesised asides ("(after 3ms in state CONNECT, …)").
fn kind(source: &str, message: &str) -> String {
    let mut key = String::with_capacity(source.len() + message.len() + 1);
    key.push_str(source);
    key.push('|');
    let mut in_digits = false;
    for c in message.chars() {
        if c == '(' {
            break;
        }
        if c.is_ascii_digit() {
            if !in_digits {
                key.push('#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            key.push(c);
        }
    }
    key
}

fn emit(level: Level, source: &str, message: &str, suppressed: u64, over: Duration) {
    macro_rules! at {
        ($level:expr) => {
            if suppressed == 0 {
                tracing::event!(target: "librdkafka", $level, source, "{message}")
            } else {
                tracing::event!(target: "librdkafka", $level, source, repeated = suppressed,
                    over_s = over.as_secs(), "{message} (and {suppressed} more like it in {}s)", over.as_secs())
            }
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        Level::TRACE => at!(Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER_DOWN: &str = "127.0.0.1:19092/bootstrap: Connect to ipv4#127.0.0.1:19092 failed: Connection refused";

    #[test]
    fn a_flood_of_one_kind_logs_once_per_window() {
        let throttle = LogThrottle::new(Duration::from_secs(30));
        let start = Instant::now();
        let logged = (0..240u64)
            .filter(|i| {
                let line = format!("{BROKER_DOWN} (after {i}ms in state CONNECT, {i} identical error(s) suppressed)");
                throttle.log_at(Level::ERROR, "FAIL", &line, start + Duration::from_millis(25 * i))
            })
            .count();
        assert_eq!(logged, 1, "240 lines of one kind in 6 s: the first one only");
        let other = throttle.log_at(Level::WARN, "FAIL", "no such topic", start + Duration::from_secs(7));
        assert!(other, "another kind is a change of state: logged at once");
        assert!(throttle.log_at(Level::ERROR, "FAIL", BROKER_DOWN, start + Duration::from_secs(31)), "next window");
    }

    #[test]
    fn a_flush_summarises_held_lines_and_forgets_quiet_kinds() {
        let throttle = LogThrottle::new(Duration::from_secs(30));
        let start = Instant::now();
        throttle.log_at(Level::ERROR, "FAIL", BROKER_DOWN, start);
        throttle.log_at(Level::ERROR, "FAIL", BROKER_DOWN, start + Duration::from_secs(1));
        throttle.flush(start + Duration::from_secs(31));
        assert_eq!(throttle.kinds(), 1, "summarised, still remembered");
        throttle.flush(start + Duration::from_secs(95));
        assert_eq!(throttle.kinds(), 0, "quiet for two windows: forgotten");
        assert!(throttle.log_at(Level::ERROR, "FAIL", BROKER_DOWN, start + Duration::from_secs(96)));
    }
}
