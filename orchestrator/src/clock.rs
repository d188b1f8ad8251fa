//! The calendar clock: what the ledger stamps reports with, what windows, keep-alive
//! and the KMS projection count from. A daemon runs on the system clock; the
//! simulator's runs on a clock that can be set and moved on, so that a 31-day
//! holiday passes in a test in seconds. Timeouts (a station that does not wake, a
//! restore that takes too long) are real durations and never read this clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// System time plus an offset (zero unless simulated); clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that says `unix_s` now and runs on from there at the real pace.
    pub fn starting_at(unix_s: i64) -> Clock {
        let clock = Clock::default();
        clock.set(unix_s);
        clock
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (system_ms() + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Seconds since the Unix epoch.
    pub fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Jump to `unix_s`; the clock runs on from there. Every clone jumps too.
    pub fn set(&self, unix_s: i64) {
        self.offset_ms
            .store(unix_s * 1000 - system_ms(), Ordering::Relaxed);
    }

    /// Move on by `by` at once.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_says_the_system_time() {
        let before = system_ms() as u64;
        let now = Clock::system().now_ms();
        assert!(now >= before && now - before < 1000, "{before} {now}");
    }

    #[test]
    fn a_set_clock_runs_on_from_where_it_was_set_and_its_clones_follow() {
        let clock = Clock::starting_at(1_800_000_000);
        let clone = clock.clone();
        assert!((1_800_000_000..1_800_000_002).contains(&clock.now_s()));
        clock.advance(Duration::from_secs(31 * 86_400));
        let moved = clone.now_s();
        assert!(
            (1_800_000_000 + 31 * 86_400..1_800_000_002 + 31 * 86_400).contains(&moved),
            "{moved}"
        );
    }
}
