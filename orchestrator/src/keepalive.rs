//! Keep-alive: after long breaks the KMS host has forgotten the stations (a CMID ages
//! out 30 days after its last request). When the ledger projects a family's count
//! below its target before the school day after the next window, or a station
//! recently got "count insufficient" (0xC004F038), a top-up campaign over the
//! stations with KMS activation on is planned for the next window.

use crate::engine::ledger::Ledger;
use crate::engine::schedule::Schedule;
use crate::engine::Family;

/// The result a station gets while the count is short.
pub const COUNT_INSUFFICIENT: u32 = 0xC004_F038;
/// The margin a top-up aims for above the threshold.
pub const MARGIN: u32 = 2;
/// How recent a 0xC004F038 must be to call for a top-up.
const RECENT_S: u64 = 7 * 86_400;

/// The end of the next window at or after `now`: the window opens, then runs until
/// it closes (at most a day later).
fn next_window_end(schedule: &Schedule, now: i64) -> Option<i64> {
    let open = schedule.next_open(now)?;
    Some(
        (1..=24 * 60)
            .map(|i| open + i * 60)
            .find(|t| !schedule.contains(*t))
            .unwrap_or(open + 86_400),
    )
}

/// Until when a top-up planned now must keep the count: the end of the school day
/// after the next window.
pub fn horizon(schedule: &Schedule, now: u64) -> Option<u64> {
    next_window_end(schedule, now as i64).map(|end| end as u64 + 86_400)
}

/// The families that need a top-up now, of those the ledger has seen activated.
pub fn due(ledger: &Ledger, schedule: &Schedule, families: &[Family], now: u64) -> Vec<Family> {
    let Some(horizon) = horizon(schedule, now) else {
        return Vec::new();
    };
    families
        .iter()
        .copied()
        .filter(|f| ledger.reports().iter().any(|r| r.family == *f))
        .filter(|f| {
            let target = f.threshold() + MARGIN;
            let falls = ledger.falls_below(*f, target, now, horizon).is_some();
            let refused = ledger.reports().iter().any(|r| {
                r.family == *f
                    && r.result == COUNT_INSUFFICIENT
                    && now.saturating_sub(r.at) < RECENT_S
            });
            // A refusal counts only when no later report of the family shows the
            // count at the target again.
            let recovered = ledger.latest(*f).is_some_and(|r| r.count >= target);
            falls || (refused && !recovered)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ledger::Report;
    use crate::engine::schedule::Window;
    use pxe::MacAddr;

    const DAY: u64 = 86_400;

    fn nightly() -> Schedule {
        Schedule {
            time_zone: jiff::tz::TimeZone::UTC,
            windows: vec![Window {
                days: [true; 7],
                start: 22 * 60,
                end: 5 * 60,
            }],
        }
    }

    fn ledger(at: u64, n: u8, result: u32) -> Ledger {
        let mut l = Ledger::new();
        for i in 0..n {
            let _ = l.add(Report {
                at,
                station: MacAddr([2, 0, 0, 0, 0, i]),
                family: Family::Windows,
                cmid: format!("c{i}"),
                result,
                activated: i + 1 >= 25,
                count: u32::from(i) + 1,
                cycle: 1,
            });
        }
        l
    }

    #[test]
    fn a_count_that_ages_out_before_the_next_school_day_is_topped_up() {
        let now = 100 * DAY + 12 * 3600; // noon
                                         // 27 activations 29 days ago: they age out tomorrow, before the school day
                                         // after tonight's window.
        let old = ledger(now - 29 * DAY, 27, 0);
        assert_eq!(
            due(&old, &nightly(), &[Family::Windows, Family::Office], now),
            vec![Family::Windows]
        );
        // 27 activations yesterday: nothing to do for weeks.
        let fresh = ledger(now - DAY, 27, 0);
        assert!(due(&fresh, &nightly(), &[Family::Windows], now).is_empty());
        // Never activated: not netreset's to keep alive.
        assert!(due(&Ledger::new(), &nightly(), &[Family::Windows], now).is_empty());
    }

    #[test]
    fn a_recent_count_insufficient_calls_for_a_top_up() {
        let now = 100 * DAY;
        let short = ledger(now - 3600, 3, COUNT_INSUFFICIENT);
        // 3 fresh CMIDs: the projection is below 27 anyway, and the refusal says so.
        assert_eq!(
            due(&short, &nightly(), &[Family::Windows], now),
            vec![Family::Windows]
        );
        let no_windows = Schedule {
            windows: vec![],
            ..nightly()
        };
        assert!(
            due(&short, &no_windows, &[Family::Windows], now).is_empty(),
            "no window, no plan"
        );
    }
}
