//! Overnight windows: when campaigns with `"start": "window"` may run cycles. A
//! window is a set of weekdays and a start and end time of day in the school's time
//! zone; an end at or before the start crosses midnight (the window belongs to the
//! day it starts), and start = end is the whole day.
//!
//! School days (weekdays, less holiday ranges) say when the KMS count must be there:
//! keep-alive tops it up in the last window before the first school day after a
//! break. Windows open in holidays too; an empty building is the best time to reset.

use jiff::civil::Date;
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

/// Days without school, first and last included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holiday {
    pub name: Option<String>,
    pub from: Date,
    pub to: Date,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub time_zone: TimeZone,
    pub windows: Vec<Window>,
    /// Monday first: the weekdays with lessons (Monday to Friday by default).
    pub school_days: [bool; 7],
    pub holidays: Vec<Holiday>,
}

/// Monday to Friday.
pub const WEEKDAYS: [bool; 7] = [true, true, true, true, true, false, false];

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

    /// The local date of `unix`.
    pub fn date(&self, unix: i64) -> Option<Date> {
        Some(
            Timestamp::from_second(unix)
                .ok()?
                .to_zoned(self.time_zone.clone())
                .date(),
        )
    }

    /// When the local day `date` begins (Unix seconds).
    pub fn day_start(&self, date: Date) -> Option<i64> {
        Some(
            date.to_zoned(self.time_zone.clone())
                .ok()?
                .timestamp()
                .as_second(),
        )
    }

    /// Whether `date` has lessons: a school weekday in no holiday.
    pub fn is_school_day(&self, date: Date) -> bool {
        let weekday = date.weekday().to_monday_zero_offset() as usize;
        self.school_days[weekday]
            && !self
                .holidays
                .iter()
                .any(|h| (h.from..=h.to).contains(&date))
    }

    /// The first school day after `date`, within two years.
    pub fn school_day_after(&self, date: Date) -> Option<Date> {
        let mut d = date;
        for _ in 0..2 * 366 {
            d = d.tomorrow().ok()?;
            if self.is_school_day(d) {
                return Some(d);
            }
        }
        None
    }

    /// When the window that `unix` falls in opened (at most a day back); `unix`
    /// itself when it is in none.
    pub fn window_start(&self, unix: i64) -> i64 {
        let minute = unix - unix.rem_euclid(60);
        if !self.contains(unix) {
            return unix;
        }
        (0..=24 * 60)
            .map(|i| minute - i * 60)
            .take_while(|t| self.contains(*t))
            .last()
            .unwrap_or(minute)
            .min(unix)
    }

    /// When the window open at `unix` closes (at most a day later).
    pub fn window_end(&self, unix: i64) -> i64 {
        let minute = unix - unix.rem_euclid(60);
        (1..=24 * 60)
            .map(|i| minute + i * 60)
            .find(|t| !self.contains(*t))
            .unwrap_or(minute + 86_400)
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
            school_days: WEEKDAYS,
            holidays: vec![Holiday {
                name: Some("winter break".into()),
                from: jiff::civil::date(2026, 12, 21),
                to: jiff::civil::date(2027, 1, 6),
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
    fn a_window_opens_and_closes_where_its_times_say() {
        let s = berlin_weeknights();
        let open = at("2026-11-23T22:00");
        assert_eq!(s.window_start(at("2026-11-24T03:17")), open);
        assert_eq!(s.window_start(open), open);
        assert_eq!(s.window_end(at("2026-11-24T03:17")), at("2026-11-24T05:30"));
        let outside = at("2026-11-24T12:00");
        assert_eq!(s.window_start(outside), outside);
    }

    #[test]
    fn school_days_are_weekdays_outside_the_holidays() {
        let s = berlin_weeknights();
        let d = jiff::civil::date;
        assert!(s.is_school_day(d(2026, 12, 18)), "a Friday in term");
        assert!(!s.is_school_day(d(2026, 12, 19)), "a Saturday");
        assert!(
            !s.is_school_day(d(2026, 12, 21)),
            "the first day of the break"
        );
        assert!(!s.is_school_day(d(2027, 1, 6)), "the last day of the break");
        assert_eq!(s.school_day_after(d(2026, 12, 18)), Some(d(2027, 1, 7)));
        assert_eq!(s.school_day_after(d(2027, 1, 8)), Some(d(2027, 1, 11)));
        let never = Schedule {
            school_days: [false; 7],
            ..s
        };
        assert_eq!(never.school_day_after(d(2027, 1, 8)), None);
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
