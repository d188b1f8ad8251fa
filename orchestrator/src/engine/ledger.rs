//! The KMS ledger: every KMS request a station's agent saw answered (each
//! 12288/12289 pair), one entry per station, family, CMID and cycle, with the first
//! and the last request and the last result. It gives the count a family last
//! reported, finds a duplicate CMID (an image captured without `sysprep
//! /generalize`), and projects the count forward: a CMID ages out of the KMS host's
//! count 30 days after its **last** request (docs/kms.md). A client renews every 7 days
//! while it runs, so a station in use stays counted; only its renewals reaching the
//! ledger keep the projection from dropping it.
//!
//! The projection counts the CMIDs netreset has seen. The host may also count
//! machines netreset never sees (staff PCs); the projection ignores them, so it errs
//! towards topping up early, never late.

use std::collections::BTreeMap;

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::Family;

/// Seconds a CMID stays in the host's count after its last request.
pub const CMID_LIFETIME_S: u64 = 30 * 86_400;

/// A count older than this (seconds) is not trusted to start a campaign's first wave
/// from: clients netreset does not see may have come or gone since.
pub const PROBE_AFTER_S: u64 = 7 * 86_400;

/// One CMID of one station in one cycle, as its agent reported it: the first
/// request (event 12288 answered by a 12289), and the newest one with its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unix seconds (or simulated seconds) of the first request.
    pub at: u64,
    pub station: MacAddr,
    pub family: Family,
    pub cmid: String,
    /// The result, activated flag and count of the newest request.
    pub result: u32,
    pub activated: bool,
    /// The host's current count in the reply.
    pub count: u32,
    /// The campaign cycle the report belongs to (a station's reset number).
    pub cycle: u64,
    /// Unix seconds of the newest request (a renewal); 0 in entries written before
    /// renewals were recorded, which means `at`.
    #[serde(default)]
    pub last: u64,
}

impl Report {
    /// When the CMID last asked the host: what its 30 days count from.
    pub fn last_request(&self) -> u64 {
        self.at.max(self.last)
    }

    /// Whether `other` is about the same CMID of the same station and cycle.
    fn same_entry(&self, other: &Report) -> bool {
        self.station == other.station
            && self.family == other.family
            && self.cmid == other.cmid
            && self.cycle == other.cycle
    }
}

/// A CMID a station already reported in an earlier cycle: the image is not
/// generalized, and resets do not add to the count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateCmid {
    pub station: MacAddr,
    pub family: Family,
    pub cmid: String,
    pub first_cycle: u64,
    pub again_cycle: u64,
}

/// What [`Ledger::add`] did with a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Added {
    /// A CMID (or cycle) the ledger did not have.
    New,
    /// A later request of a CMID it had: a renewal; the entry's last request moved.
    Renewed,
    /// Nothing newer than the entry has (a retried POST).
    Known,
    /// New, and the station reported the same CMID in an earlier cycle.
    Duplicate(DuplicateCmid),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    reports: Vec<Report>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn reports(&self) -> &[Report] {
        &self.reports
    }

    /// Record a request. The first of a station's CMID in a cycle makes an entry; a
    /// later one (a renewal) moves its last request and result; one no newer than
    /// the entry (a retried POST) changes nothing. A CMID the station reported in an
    /// earlier cycle is recorded and returned as a duplicate, for the campaign to
    /// stop on.
    pub fn add(&mut self, report: Report) -> Added {
        if let Some(entry) = self.reports.iter_mut().find(|r| r.same_entry(&report)) {
            let at = report.last_request();
            if at <= entry.last_request() {
                return Added::Known;
            }
            entry.at = entry.at.min(report.at);
            entry.last = at;
            entry.result = report.result;
            entry.activated = report.activated;
            entry.count = report.count;
            return Added::Renewed;
        }
        let earlier = self
            .reports
            .iter()
            .find(|r| {
                r.station == report.station
                    && r.family == report.family
                    && r.cmid == report.cmid
                    && r.cycle != report.cycle
            })
            .map(|r| r.cycle);
        let added = match earlier {
            Some(first_cycle) => Added::Duplicate(DuplicateCmid {
                station: report.station,
                family: report.family,
                cmid: report.cmid.clone(),
                first_cycle,
                again_cycle: report.cycle,
            }),
            None => Added::New,
        };
        self.reports.push(report);
        added
    }

    /// The entry of this report's station, family, CMID and cycle, if any.
    pub fn entry(&self, report: &Report) -> Option<&Report> {
        self.reports.iter().find(|r| r.same_entry(report))
    }

    /// The cycle in which `station` first reported `cmid` of `family`, if it did: a
    /// later request of it is a renewal of that entry.
    pub fn cycle_of(&self, station: MacAddr, family: Family, cmid: &str) -> Option<u64> {
        self.reports
            .iter()
            .filter(|r| r.station == station && r.family == family && r.cmid == cmid)
            .map(|r| r.cycle)
            .min()
    }

    /// The distinct CMIDs of `family` that `station` reported in `cycle`.
    pub fn cmids_in_cycle(&self, station: MacAddr, family: Family, cycle: u64) -> Vec<&str> {
        let mut cmids: Vec<&str> = self
            .reports
            .iter()
            .filter(|r| r.station == station && r.family == family && r.cycle == cycle)
            .map(|r| r.cmid.as_str())
            .collect();
        cmids.sort_unstable();
        cmids.dedup();
        cmids
    }

    /// The count of the newest request of `family` (0 before any); of requests in the
    /// same second, the highest.
    pub fn latest_count(&self, family: Family) -> u32 {
        self.latest(family).map_or(0, |r| r.count)
    }

    /// The entry of `family` with the newest request.
    pub fn latest(&self, family: Family) -> Option<&Report> {
        self.reports
            .iter()
            .filter(|r| r.family == family)
            .max_by_key(|r| (r.last_request(), r.count))
    }

    /// Every CMID of `family` and its last request.
    fn last_seen(&self, family: Family) -> BTreeMap<&str, u64> {
        let mut last = BTreeMap::new();
        for r in self.reports.iter().filter(|r| r.family == family) {
            let at = last.entry(r.cmid.as_str()).or_insert(r.last_request());
            *at = (*at).max(r.last_request());
        }
        last
    }

    /// The count the host will have at `t` from the CMIDs in the ledger, if none of
    /// them asks again.
    pub fn projected(&self, family: Family, t: u64) -> u32 {
        self.last_seen(family)
            .values()
            .filter(|&&last| last <= t && t < last + CMID_LIFETIME_S)
            .count() as u32
    }

    /// The first moment in `[from, until)` at which the projected count is below
    /// `target`, if any. The count only falls when a CMID ages out, so those moments
    /// are the only ones to check.
    pub fn falls_below(&self, family: Family, target: u32, from: u64, until: u64) -> Option<u64> {
        if self.projected(family, from) < target {
            return Some(from);
        }
        let mut edges: Vec<u64> = self
            .last_seen(family)
            .values()
            .map(|last| last + CMID_LIFETIME_S)
            .filter(|&t| t > from && t < until)
            .collect();
        edges.sort_unstable();
        edges
            .into_iter()
            .find(|&t| self.projected(family, t) < target)
    }

    /// The projected count at the start of each of the `days` days from `from`.
    pub fn projection(&self, family: Family, from: u64, days: u32) -> Vec<u32> {
        (0..u64::from(days))
            .map(|d| self.projected(family, from + d * 86_400))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn report(station: u8, cmid: &str, at: u64, count: u32, cycle: u64) -> Report {
        Report {
            at,
            station: MacAddr([2, 0, 0, 0, 0, station]),
            family: Family::Windows,
            cmid: cmid.into(),
            result: 0,
            activated: count >= 25,
            count,
            cycle,
            last: 0,
        }
    }

    #[test]
    fn a_cmid_reported_again_in_a_later_cycle_is_a_duplicate_and_a_retried_post_is_not() {
        let mut ledger = Ledger::new();
        let first = report(1, "cmid-a", 10, 1, 1);
        assert_eq!(ledger.add(first.clone()), Added::New);
        assert_eq!(ledger.add(first.clone()), Added::Known);
        assert_eq!(ledger.reports().len(), 1, "kept once");
        ledger.add(report(2, "cmid-b", 20, 2, 1));
        let Added::Duplicate(dup) = ledger.add(report(1, "cmid-a", 30, 2, 2)) else {
            panic!("not a duplicate")
        };
        assert_eq!(
            (dup.first_cycle, dup.again_cycle, dup.cmid.as_str()),
            (1, 2, "cmid-a")
        );
        // Another station with the same CMID in the same cycle is a different story
        // (the host counts it once); the per-station check is what names the image.
        assert_eq!(ledger.add(report(3, "cmid-b", 40, 2, 1)), Added::New);
    }

    #[test]
    fn a_renewal_moves_the_cmids_last_request_and_result_and_keeps_its_first() {
        let mut ledger = Ledger::new();
        ledger.add(report(1, "cmid-a", 10 * DAY, 3, 1));
        let renewal = Report {
            activated: true,
            ..report(1, "cmid-a", 17 * DAY, 26, 1)
        };
        assert_eq!(ledger.add(renewal.clone()), Added::Renewed);
        assert_eq!(ledger.add(renewal), Added::Known, "the same renewal again");
        let older = report(1, "cmid-a", 12 * DAY, 9, 1);
        assert_eq!(ledger.add(older), Added::Known, "an older request late");
        let entry = &ledger.reports()[0];
        assert_eq!(ledger.reports().len(), 1);
        assert_eq!((entry.at, entry.last_request()), (10 * DAY, 17 * DAY));
        assert_eq!((entry.count, entry.activated), (26, true));
        assert_eq!(ledger.latest_count(Family::Windows), 26);
    }

    #[test]
    fn a_cmid_is_known_from_the_cycle_it_was_first_reported_in() {
        let mut ledger = Ledger::new();
        ledger.add(report(1, "cmid-a", 10, 3, 7));
        ledger.add(report(1, "cmid-a", 20, 4, 9));
        ledger.add(report(1, "cmid-b", 30, 5, 9));
        let station = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(ledger.cycle_of(station, Family::Windows, "cmid-a"), Some(7));
        assert_eq!(ledger.cycle_of(station, Family::Office, "cmid-a"), None);
        assert_eq!(
            ledger.cmids_in_cycle(station, Family::Windows, 9),
            vec!["cmid-a", "cmid-b"]
        );
    }

    #[test]
    fn weekly_renewals_keep_a_cmid_in_the_projection_past_thirty_days_from_its_first_request() {
        let mut ledger = Ledger::new();
        for i in 0..25u8 {
            ledger.add(report(i, &format!("c{i}"), 0, u32::from(i) + 1, 1));
        }
        // Every station renews on days 7, 14, ..., 56.
        for week in 1..=8u64 {
            for i in 0..25u8 {
                ledger.add(report(i, &format!("c{i}"), week * 7 * DAY, 25, 1));
            }
        }
        assert_eq!(ledger.projected(Family::Windows, 60 * DAY), 25);
        assert_eq!(
            ledger.falls_below(Family::Windows, 25, 57 * DAY, 86 * DAY),
            None,
            "the last renewal (day 56) carries the count to day 86"
        );
        assert_eq!(
            ledger.falls_below(Family::Windows, 25, 57 * DAY, 90 * DAY),
            Some(86 * DAY)
        );
    }

    #[test]
    fn the_latest_count_is_the_newest_reports() {
        let mut ledger = Ledger::new();
        assert_eq!(ledger.latest_count(Family::Windows), 0);
        ledger.add(report(1, "a", 50, 7, 1));
        ledger.add(report(2, "b", 40, 9, 1));
        assert_eq!(ledger.latest_count(Family::Windows), 7);
        assert_eq!(ledger.latest_count(Family::Office), 0);
    }

    #[test]
    fn the_projection_drops_each_cmid_thirty_days_after_its_last_request() {
        let mut ledger = Ledger::new();
        for i in 0..27u8 {
            ledger.add(report(
                i,
                &format!("c{i}"),
                u64::from(i) * DAY,
                u32::from(i) + 1,
                1,
            ));
        }
        // c0 asked again on day 20.
        ledger.add(report(0, "c0", 20 * DAY, 27, 2));
        assert_eq!(ledger.projected(Family::Windows, 26 * DAY), 27);
        // Day 30: c1 (day 1) is still in until the end of day 30; c0 renewed on day 20.
        assert_eq!(ledger.projected(Family::Windows, 31 * DAY), 26, "c1 gone");
        let below = ledger
            .falls_below(Family::Windows, 25, 26 * DAY, 90 * DAY)
            .unwrap();
        // 27 at day 26; c1 leaves at day 31, c2 at 32, c3 at 33: 24 from day 33.
        assert_eq!(below, 33 * DAY);
        assert_eq!(
            ledger.falls_below(Family::Windows, 25, 26 * DAY, 32 * DAY),
            None
        );
        let days = ledger.projection(Family::Windows, 26 * DAY, 60);
        assert_eq!(days.len(), 60);
        assert_eq!(days[0], 27);
        assert_eq!(*days.last().unwrap(), 0, "a long holiday empties the count");
    }
}
