//! Overnight windows: when campaigns with `"start": "window"` may run cycles. A
//! window is a set of weekdays and a start and end time of day in the school's time
//! zone; an end at or before the start crosses midnight (the window belongs to the
//! day it starts), and start = end is the whole day.

use jiff::tz::TimeZone;
use jiff::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    /// Minutes after midnight.
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub time_zone: TimeZone,
    pub windows: Vec<Window>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekday name (`mon` .. `sun`) as Monday-first index.
pub fn day(name: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(name))
}

/// `HH:MM` as minutes after midnight.
pub fn time_of_day(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

impl Schedule {
    /// Whether `unix` (seconds) falls in a window.
    pub fn contains(&self, unix: i64) -> bool {
        let Ok(t) = Timestamp::from_second(unix) else {
            return false;
        };
        let z = t.to_zoned(self.time_zone.clone());
        let today = z.weekday().to_monday_zero_offset() as usize;
        let yesterday = (today + 6) % 7;
        let minute = z.hour() as u16 * 60 + z.minute() as u16;
        self.windows.iter().any(|w| {
            if w.start == w.end {
                w.days[today]
            } else if w.start < w.end {
                w.days[today] && (w.start..w.end).contains(&minute)
            } else {
                (w.days[today] && minute >= w.start) || (w.days[yesterday] && minute < w.end)
            }
        })
    }

    /// The first moment at or after `unix` in a window, within 8 days.
    pub fn next_open(&self, unix: i64) -> Option<i64> {
        if self.contains(unix) {
            return Some(unix);
        }
        let first = unix - unix.rem_euclid(60) + 60;
        (0..8 * 24 * 60)
            .map(|i| first + i * 60)
            .find(|t| self.contains(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin_weeknights() -> Schedule {
        let mut days = [true; 7];
        days[5] = false; // no window starting Saturday
        days[6] = false; // nor Sunday
        Schedule {
            time_zone: TimeZone::get("Europe/Berlin").unwrap(),
            windows: vec![Window {
                days,
                start: 22 * 60,
                end: 5 * 60 + 30,
            }],
        }
    }

    fn at(text: &str) -> i64 {
        // Local Berlin time -> Unix seconds.
        text.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(TimeZone::get("Europe/Berlin").unwrap())
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_starts() {
        let s = berlin_weeknights();
        // 2026-11-23 is a Monday.
        assert!(!s.contains(at("2026-11-23T21:59")));
        assert!(s.contains(at("2026-11-23T22:00")));
        assert!(
            s.contains(at("2026-11-24T05:29")),
            "Tuesday morning, Monday's window"
        );
        assert!(!s.contains(at("2026-11-24T05:30")));
        assert!(
            s.contains(at("2026-11-28T03:00")),
            "Saturday morning, Friday's window"
        );
        assert!(
            !s.contains(at("2026-11-28T23:00")),
            "no window starts on Saturday"
        );
        assert!(!s.contains(at("2026-11-30T01:00")), "nor on Sunday");
    }

    #[test]
    fn the_next_window_opens_on_the_next_weekday_evening() {
        let s = berlin_weeknights();
        assert_eq!(
            s.next_open(at("2026-11-28T12:00")),
            Some(at("2026-11-30T22:00"))
        );
        let inside = at("2026-11-24T01:00");
        assert_eq!(s.next_open(inside), Some(inside));
        let never = Schedule {
            windows: vec![],
            ..s
        };
        assert_eq!(never.next_open(inside), None);
    }

    #[test]
    fn days_and_times_parse_strictly() {
        assert_eq!(day("Mon"), Some(0));
        assert_eq!(day("sun"), Some(6));
        assert_eq!(day("monday"), None);
        assert_eq!(time_of_day("22:00"), Some(1320));
        assert_eq!(time_of_day("05:30"), Some(330));
        for bad in ["24:00", "7:00", "07:60", "0700", "ab:cd"] {
            assert_eq!(time_of_day(bad), None, "{bad}");
        }
    }
}
