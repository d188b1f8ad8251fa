//! The KMS ledger: every activation report a station's agent sent, with its time and
//! CMID. It gives the count a family last reported, finds a duplicate CMID (an image
//! captured without `sysprep /generalize`), and projects the count forward: a CMID
//! ages out of the KMS host's count 30 days after its last request (KMS.md), so the
//! ledger knows when the count will fall below a target if nothing asks again.
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

/// One report of a station's agent (event 12289 and the CMID of its 12288).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unix seconds (or simulated seconds).
    pub at: u64,
    pub station: MacAddr,
    pub family: Family,
    pub cmid: String,
    pub result: u32,
    pub activated: bool,
    /// The host's current count in the reply.
    pub count: u32,
    /// The campaign cycle the report belongs to (a station's reset number).
    pub cycle: u64,
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

    /// Record a report. The same report twice (a retried POST) is kept once. A CMID
    /// the station reported in an earlier cycle is recorded and returned as a
    /// duplicate, for the campaign to stop on.
    pub fn add(&mut self, report: Report) -> Result<(), DuplicateCmid> {
        if self.contains(&report) {
            return Ok(());
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
        let duplicate = earlier.map(|first_cycle| DuplicateCmid {
            station: report.station,
            family: report.family,
            cmid: report.cmid.clone(),
            first_cycle,
            again_cycle: report.cycle,
        });
        self.reports.push(report);
        match duplicate {
            Some(d) => Err(d),
            None => Ok(()),
        }
    }

    /// Whether the ledger has this report already: the same station, family, CMID and
    /// cycle (a retried POST, whenever it arrives).
    pub fn contains(&self, report: &Report) -> bool {
        self.reports.iter().any(|r| {
            r.station == report.station
                && r.family == report.family
                && r.cmid == report.cmid
                && r.cycle == report.cycle
        })
    }

    /// The count of the newest report of `family` (0 before any); of reports in the
    /// same second, the highest.
    pub fn latest_count(&self, family: Family) -> u32 {
        self.latest(family).map_or(0, |r| r.count)
    }

    /// The newest report of `family`.
    pub fn latest(&self, family: Family) -> Option<&Report> {
        self.reports
            .iter()
            .filter(|r| r.family == family)
            .max_by_key(|r| (r.at, r.count))
    }

    /// Every CMID of `family` and its last request.
    fn last_seen(&self, family: Family) -> BTreeMap<&str, u64> {
        let mut last = BTreeMap::new();
        for r in self.reports.iter().filter(|r| r.family == family) {
            let at = last.entry(r.cmid.as_str()).or_insert(r.at);
            *at = (*at).max(r.at);
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
        }
    }

    #[test]
    fn a_cmid_reported_again_in_a_later_cycle_is_a_duplicate_and_a_retried_post_is_not() {
        let mut ledger = Ledger::new();
        let first = report(1, "cmid-a", 10, 1, 1);
        ledger.add(first.clone()).unwrap();
        ledger.add(first.clone()).unwrap();
        let retried_later = Report { at: 11, ..first };
        ledger.add(retried_later).unwrap();
        assert_eq!(
            ledger.reports().len(),
            1,
            "kept once, whenever the retry arrives"
        );
        ledger.add(report(2, "cmid-b", 20, 2, 1)).unwrap();
        let dup = ledger.add(report(1, "cmid-a", 30, 2, 2)).unwrap_err();
        assert_eq!(
            (dup.first_cycle, dup.again_cycle, dup.cmid.as_str()),
            (1, 2, "cmid-a")
        );
        // Another station with the same CMID in the same cycle is a different story
        // (the host counts it once); the per-station check is what names the image.
        assert!(ledger.add(report(3, "cmid-b", 40, 2, 1)).is_ok());
    }

    #[test]
    fn the_latest_count_is_the_newest_reports() {
        let mut ledger = Ledger::new();
        assert_eq!(ledger.latest_count(Family::Windows), 0);
        ledger.add(report(1, "a", 50, 7, 1)).unwrap();
        ledger.add(report(2, "b", 40, 9, 1)).unwrap();
        assert_eq!(ledger.latest_count(Family::Windows), 7);
        assert_eq!(ledger.latest_count(Family::Office), 0);
    }

    #[test]
    fn the_projection_drops_each_cmid_thirty_days_after_its_last_request() {
        let mut ledger = Ledger::new();
        for i in 0..27u8 {
            ledger
                .add(report(
                    i,
                    &format!("c{i}"),
                    u64::from(i) * DAY,
                    u32::from(i) + 1,
                    1,
                ))
                .unwrap();
        }
        // c0 asked again on day 20.
        ledger.add(report(0, "c0", 20 * DAY, 27, 2)).ok();
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
