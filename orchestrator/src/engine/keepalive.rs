//! Keep-alive: after long breaks the KMS host has forgotten the stations (a CMID ages
//! out 30 days after its last request). When the ledger projects a family's count
//! below its target by the end of the first school day after the next window, a
//! top-up campaign over the stations with KMS activation on is planned for the last
//! window before that school day (so that what it activates lasts as long as it can:
//! at the end of a 31-day holiday, not at its start). A station that recently got
//! "count insufficient" (0xC004F038) calls for a top-up in the very next window.

use jiff::civil::Date;

use crate::engine::ledger::Ledger;
use crate::engine::schedule::Schedule;
use crate::engine::Family;

pub use super::COUNT_INSUFFICIENT;
/// The margin a top-up aims for above the threshold.
pub const MARGIN: u32 = 2;
/// How recent a 0xC004F038 must be to call for a top-up.
const RECENT_S: u64 = 7 * 86_400;

/// A top-up the ledger calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopUp {
    pub families: Vec<Family>,
    /// When the window it runs in opens (Unix seconds).
    pub opens: i64,
    /// The first school day after that window.
    pub school_day: Date,
    /// The end of that school day: the count must last until then.
    pub horizon: u64,
    /// Whether that window is the next one: the campaign is created now and waits
    /// for it. Otherwise it is created when it is.
    pub next_window: bool,
}

/// The top-up due at `now` for `families` (of those the ledger has seen activated),
/// if any.
pub fn plan(ledger: &Ledger, schedule: &Schedule, families: &[Family], now: u64) -> Option<TopUp> {
    let first = schedule.next_open(now as i64)?;
    let first_date = schedule.date(schedule.window_start(first))?;
    let school_day = schedule.school_day_after(first_date)?;
    let horizon = schedule.day_start(school_day.tomorrow().ok()?)? as u64;
    let mut refused = false;
    let due: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| ledger.reports().iter().any(|r| r.family == *f))
        .filter(|f| {
            let target = f.threshold() + MARGIN;
            let falls = ledger.falls_below(*f, target, now, horizon).is_some();
            // A refusal counts only when no later report of the family shows the
            // count at the target again.
            let recovered = ledger.latest(*f).is_some_and(|r| r.count >= target);
            let short = !recovered
                && ledger.reports().iter().any(|r| {
                    r.family == *f
                        && r.result == COUNT_INSUFFICIENT
                        && now.saturating_sub(r.last_request()) < RECENT_S
                });
            refused |= short;
            falls || short
        })
        .collect();
    if due.is_empty() {
        return None;
    }
    // The last window that opens before the school day.
    let mut opens = first;
    if !refused {
        for _ in 0..800 {
            let after = schedule.window_end(opens);
            match schedule.next_open(after) {
                Some(o) if schedule.date(o).is_some_and(|d| d < school_day) => opens = o,
                _ => break,
            }
        }
    }
    Some(TopUp {
        families: due,
        opens,
        school_day,
        horizon,
        next_window: opens == first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ledger::Report;
    use crate::engine::schedule::{Holiday, Window, WEEKDAYS};
    use jiff::civil::date;
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
            school_days: WEEKDAYS,
            holidays: vec![Holiday {
                name: None,
                from: date(2026, 12, 19),
                to: date(2027, 1, 18),
            }],
        }
    }

    /// UTC `YYYY-MM-DDTHH:MM` as Unix seconds.
    fn at(text: &str) -> u64 {
        format!("{text}:00Z")
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second() as u64
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
                last: 0,
            });
        }
        l
    }

    #[test]
    fn a_count_that_ages_out_before_the_next_school_day_is_topped_up_tonight() {
        // Monday noon; 27 activations 29 days ago age out tomorrow, a school day.
        let now = at("2026-11-23T12:00");
        let old = ledger(now - 29 * DAY, 27, 0);
        let plan = plan(&old, &nightly(), &[Family::Windows, Family::Office], now).unwrap();
        assert_eq!(plan.families, vec![Family::Windows]);
        assert_eq!(plan.opens as u64, at("2026-11-23T22:00"));
        assert_eq!(plan.school_day, date(2026, 11, 24));
        assert_eq!(plan.horizon, at("2026-11-25T00:00"));
        assert!(plan.next_window);
        // 27 activations yesterday: nothing to do for weeks.
        let fresh = ledger(now - DAY, 27, 0);
        assert_eq!(
            super::plan(&fresh, &nightly(), &[Family::Windows], now),
            None
        );
        // Never activated: not netreset's to keep alive.
        assert_eq!(
            super::plan(&Ledger::new(), &nightly(), &[Family::Windows], now),
            None
        );
    }

    #[test]
    fn after_a_31_day_holiday_the_top_up_runs_in_the_last_window_before_school() {
        let s = nightly();
        let activated = ledger(at("2026-12-18T23:00"), 27, 0);
        // The first morning of the holiday: the count will be gone by the first school
        // day, but a top-up now would be gone too; it is planned for the eve of school.
        let early = plan(&activated, &s, &[Family::Windows], at("2026-12-19T12:00")).unwrap();
        assert_eq!(early.opens as u64, at("2027-01-18T22:00"));
        assert_eq!(early.school_day, date(2027, 1, 19));
        assert!(!early.next_window, "not yet");
        assert_eq!(activated.projected(Family::Windows, early.horizon), 0);
        // The last afternoon of the holiday: tonight's window it is.
        let eve = plan(&activated, &s, &[Family::Windows], at("2027-01-18T21:00")).unwrap();
        assert_eq!(eve.opens, early.opens);
        assert!(eve.next_window);
        // Inside that window (after midnight, still the window of the 18th).
        let inside = plan(&activated, &s, &[Family::Windows], at("2027-01-19T01:00")).unwrap();
        assert_eq!(inside.opens as u64, at("2027-01-19T01:00"));
        assert_eq!(inside.school_day, date(2027, 1, 19));
    }

    #[test]
    fn a_recent_count_insufficient_calls_for_a_top_up_in_the_next_window() {
        // Mid-holiday, 3 fresh CMIDs refused: the very next window.
        let now = at("2026-12-28T12:00");
        let short = ledger(now - 3600, 3, COUNT_INSUFFICIENT);
        let plan = plan(&short, &nightly(), &[Family::Windows], now).unwrap();
        assert_eq!(plan.families, vec![Family::Windows]);
        assert_eq!(plan.opens as u64, at("2026-12-28T22:00"));
        assert!(plan.next_window);
        let no_windows = Schedule {
            windows: vec![],
            ..nightly()
        };
        assert_eq!(
            super::plan(&short, &no_windows, &[Family::Windows], now),
            None,
            "no window, no plan"
        );
    }
}
