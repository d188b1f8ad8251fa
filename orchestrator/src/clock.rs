//! The calendar clock: what the ledger stamps reports with, what windows, keep-alive
//! and the KMS projection count from. A daemon runs on the system clock; the
//! simulator's runs on a clock that can be set and moved on, so that a 31-day
//! holiday passes in a test in seconds. Timeouts (a station that does not wake, a
//! restore that takes too long) are real durations and never read this clock: they
//! run on [`Clock::mono_s`], which an NTP step at boot or the simulator's jumps do
//! not move.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// System time plus an offset (zero unless simulated); clones share the offset. It
/// carries the daemon's monotonic clock too.
#[derive(Clone, Debug)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    mono: Arc<Mono>,
}

/// Seconds on a monotonic clock, resumed where the last run of the daemon left off.
#[derive(Debug)]
struct Mono {
    base: Instant,
    offset_s: AtomicU64,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            offset_ms: Arc::default(),
            mono: Arc::new(Mono {
                base: Instant::now(),
                offset_s: AtomicU64::new(0),
            }),
        }
    }
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

    /// Seconds on the monotonic clock that time-outs are measured on. It never goes
    /// back and ignores [`Clock::set`] and [`Clock::advance`].
    pub fn mono_s(&self) -> u64 {
        self.mono.offset_s.load(Ordering::Relaxed) + self.mono.base.elapsed().as_secs()
    }

    /// Go on from at least `s` (the latest monotonic time a stored campaign holds):
    /// a restarted daemon's time-outs continue where they stood, and the time it was
    /// down does not count against a station.
    pub fn resume_mono(&self, s: u64) {
        let elapsed = self.mono.base.elapsed().as_secs();
        self.mono
            .offset_s
            .fetch_max(s.saturating_sub(elapsed), Ordering::Relaxed);
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, as the API shows times
/// (`2026-12-18T21:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    let at = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX);
    format!("{at:.3}")
}

/// A duration as the configuration writes it: `100ms`, `5m`, `4h`, `1h 30m`, `2d`
/// (a day is 24 hours here), or ISO 8601 (`PT4H`). Months and years, which have no
/// fixed length, and negative durations are not durations here (`None`; the caller
/// says what it expects).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let span: jiff::Span = text.parse().ok()?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()?;
    std::time::Duration::try_from(signed).ok()
}

/// A duration as a person writes it, in days (of 24 h) and smaller units: `4h`,
/// `1h 30m`, `7d`, `500ms`.
pub fn friendly(d: std::time::Duration) -> String {
    let Ok(signed) = jiff::SignedDuration::try_from(d) else {
        return format!("{} s", d.as_secs());
    };
    let in_days = jiff::SpanRound::new()
        .largest(jiff::Unit::Day)
        .days_are_24_hours();
    match jiff::Span::try_from(signed).and_then(|span| span.round(in_days)) {
        Ok(span) => format!("{span:#}"),
        Err(_) => format!("{signed:#}"),
    }
}

/// RFC 3339 text as Unix milliseconds, if it is a time.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let at: jiff::Timestamp = text.parse().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_times_are_rfc3339_utc_with_milliseconds_and_read_back() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_797_627_600_123), "2026-12-18T21:00:00.123Z");
        assert_eq!(
            parse_rfc3339("2026-12-18T21:00:00.123Z"),
            Some(1_797_627_600_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn configured_durations_read_as_written_and_months_or_negatives_are_refused() {
        use std::time::Duration;
        for (text, want) in [
            ("100ms", Duration::from_millis(100)),
            ("5m", Duration::from_secs(300)),
            ("4h", Duration::from_secs(4 * 3600)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("7 days", Duration::from_secs(7 * 86_400)),
            ("PT4H", Duration::from_secs(4 * 3600)),
        ] {
            assert_eq!(parse_duration(text), Some(want), "{text}");
        }
        for bad in ["", "4", "1mo", "-5m", "soon"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(friendly(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(friendly(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(friendly(Duration::from_secs(7 * 86_400)), "7d");
    }

    #[test]
    fn the_system_clock_says_the_system_time() {
        let before = system_ms() as u64;
        let now = Clock::system().now_ms();
        assert!(now >= before && now - before < 1000, "{before} {now}");
    }

    #[test]
    fn the_monotonic_clock_ignores_calendar_jumps_and_resumes_from_a_stored_time() {
        let clock = Clock::starting_at(1_800_000_000);
        let before = clock.mono_s();
        clock.advance(Duration::from_secs(2 * 3600));
        clock.set(1_700_000_000);
        assert!(clock.mono_s() - before < 2, "calendar jumps do not move it");
        clock.resume_mono(5_000);
        assert!((5_000..5_002).contains(&clock.mono_s()));
        clock.resume_mono(10);
        assert!(clock.mono_s() >= 5_000, "never back");
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
