//! The planner: given the targets, the counts the stations last reported, and the
//! cycles in flight, which idle stations start a cycle now, and which families each
//! activates. Pure: the campaign runner calls it after every event.
//!
//! Rules (issue 4): target = threshold + margin; a cycle on a generalized image adds
//! one CMID per family it activates, so cycles in flight count toward the expected
//! gain and no cycle starts once reported + in flight reaches the target: the count
//! ends exactly there. A cycle activates only the families still short. Cycles go to
//! the stations with the fewest cycles so far (then MAC order), so they spread over
//! as many distinct stations as possible, at most `max_parallel` at once; and no
//! station starts a cycle while another still has to start one more than it has
//! (cycles done plus the one in flight): a fast station waits for a slow one rather
//! than running ahead, so the cycles per station differ by one at most.

use std::collections::BTreeMap;

use pxe::MacAddr;

use super::Family;

/// Where a family stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goal {
    pub family: Family,
    pub target: u32,
    /// The latest count a station reported for this family (0 before any report).
    pub reported: u32,
}

/// A selected station as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Station {
    pub mac: MacAddr,
    /// Cycles this station completed in this campaign.
    pub cycles_done: u32,
    /// The families of the cycle it is running, when it is running one.
    pub in_flight: Option<Vec<Family>>,
    /// False for stations out of the campaign (unreachable, quarantined, in use).
    pub eligible: bool,
}

/// A cycle to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub mac: MacAddr,
    pub families: Vec<Family>,
}

/// What is still needed per family once the cycles in flight land.
pub fn need(goals: &[Goal], stations: &[Station]) -> BTreeMap<Family, u32> {
    goals
        .iter()
        .map(|g| {
            let in_flight = stations
                .iter()
                .filter(|s| s.in_flight.as_ref().is_some_and(|f| f.contains(&g.family)))
                .count() as u32;
            (g.family, g.target.saturating_sub(g.reported + in_flight))
        })
        .collect()
}

/// The cycles to start now.
pub fn plan(goals: &[Goal], stations: &[Station], max_parallel: usize) -> Vec<Start> {
    let mut need = need(goals, stations);
    let running = stations.iter().filter(|s| s.in_flight.is_some()).count();
    let mut slots = max_parallel.saturating_sub(running);
    let started = |s: &Station| s.cycles_done + u32::from(s.in_flight.is_some());
    let floor = stations
        .iter()
        .filter(|s| s.eligible)
        .map(started)
        .min()
        .unwrap_or(0);
    let mut idle: Vec<&Station> = stations
        .iter()
        .filter(|s| s.eligible && s.in_flight.is_none() && s.cycles_done <= floor)
        .collect();
    idle.sort_by_key(|s| (s.cycles_done, s.mac.octets()));
    let mut starts = Vec::new();
    for station in idle {
        if slots == 0 {
            break;
        }
        let families: Vec<Family> = need
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(f, _)| *f)
            .collect();
        if families.is_empty() {
            break;
        }
        for f in &families {
            *need.get_mut(f).expect("planned family") -= 1;
        }
        starts.push(Start {
            mac: station.mac,
            families,
        });
        slots -= 1;
    }
    starts
}

/// The guard: a family needs at least its threshold of registered stations, since
/// Microsoft counts computers; a campaign for it is refused with the reason.
pub fn guard(family: Family, registered: usize) -> Result<(), super::Error> {
    let threshold = family.threshold() as usize;
    if registered >= threshold {
        return Ok(());
    }
    Err(super::Error::TooFewStations {
        family,
        registered,
        threshold,
    })
}

/// The least time a campaign can take: ceil(need / min(stations, max_parallel))
/// cycles one after the other.
pub fn lower_bound_cycles(need: u32, stations: usize, max_parallel: usize) -> u32 {
    let lanes = stations.min(max_parallel).max(1) as u32;
    need.div_ceil(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    fn stations(n: u8) -> Vec<Station> {
        (0..n)
            .map(|i| Station {
                mac: mac(i),
                cycles_done: 0,
                in_flight: None,
                eligible: true,
            })
            .collect()
    }

    fn goals(windows: u32, office: u32) -> Vec<Goal> {
        vec![
            Goal {
                family: Family::Windows,
                target: 27,
                reported: windows,
            },
            Goal {
                family: Family::Office,
                target: 7,
                reported: office,
            },
        ]
    }

    /// Run a campaign to the end on a model host where every cycle adds one CMID per
    /// family it activates; cycles finish in start order. Returns the final counts,
    /// the cycles per station, and the number of cycles started after a target was
    /// reported.
    fn campaign(n: u8, max_parallel: usize) -> (u32, u32, Vec<u32>, usize) {
        let mut st = stations(n);
        let (mut windows, mut office) = (0u32, 0u32);
        let mut queue: std::collections::VecDeque<usize> = Default::default();
        let mut late = 0;
        loop {
            for start in plan(&goals(windows, office), &st, max_parallel) {
                if (start.families.contains(&Family::Windows) && windows >= 27)
                    || (start.families.contains(&Family::Office) && office >= 7)
                {
                    late += 1;
                }
                let i = st.iter().position(|s| s.mac == start.mac).unwrap();
                st[i].in_flight = Some(start.families);
                queue.push_back(i);
            }
            let Some(i) = queue.pop_front() else { break };
            let families = st[i].in_flight.take().unwrap();
            st[i].cycles_done += 1;
            if families.contains(&Family::Windows) {
                windows += 1;
            }
            if families.contains(&Family::Office) {
                office += 1;
            }
        }
        (
            windows,
            office,
            st.iter().map(|s| s.cycles_done).collect(),
            late,
        )
    }

    #[test]
    fn five_stations_end_exactly_at_27_and_7_with_cycles_spread_evenly() {
        for max_parallel in [1, 2, 5, 8] {
            let (windows, office, cycles, late) = campaign(5, max_parallel);
            assert_eq!((windows, office), (27, 7), "max_parallel {max_parallel}");
            assert_eq!(late, 0, "no cycle starts once the target is reached");
            let (lo, hi) = (cycles.iter().min().unwrap(), cycles.iter().max().unwrap());
            assert!(hi - lo <= 1, "cycles per station {cycles:?}");
            assert_eq!(cycles.iter().sum::<u32>(), 27);
        }
    }

    #[test]
    fn cycles_in_flight_count_toward_the_target_and_slots_are_respected() {
        let mut st = stations(6);
        st[0].in_flight = Some(vec![Family::Windows, Family::Office]);
        st[1].in_flight = Some(vec![Family::Windows]);
        // Windows: 27 - 24 reported - 2 in flight = 1; Office: 7 - 6 - 1 = 0.
        let starts = plan(&goals(24, 6), &st, 4);
        assert_eq!(
            starts,
            vec![Start {
                mac: mac(2),
                families: vec![Family::Windows]
            }]
        );
        assert!(
            plan(&goals(25, 6), &st, 4).is_empty(),
            "reported + in flight = target"
        );
        assert_eq!(plan(&goals(0, 0), &st, 3).len(), 1, "3 slots, 2 taken");
    }

    #[test]
    fn a_cycle_activates_only_the_families_still_short() {
        let starts = plan(&goals(10, 7), &stations(3), 3);
        assert!(starts.iter().all(|s| s.families == vec![Family::Windows]));
        let starts = plan(&goals(27, 2), &stations(3), 3);
        assert!(starts.iter().all(|s| s.families == vec![Family::Office]));
    }

    #[test]
    fn ineligible_stations_get_no_cycles_and_the_rest_carry_on() {
        let mut st = stations(5);
        st[1].eligible = false;
        st[3].eligible = false;
        let starts = plan(&goals(0, 0), &st, 5);
        let macs: Vec<MacAddr> = starts.iter().map(|s| s.mac).collect();
        assert_eq!(macs, vec![mac(0), mac(2), mac(4)]);
    }

    #[test]
    fn the_station_with_fewest_cycles_goes_first() {
        let mut st = stations(3);
        st[0].cycles_done = 2;
        st[1].cycles_done = 1;
        let starts = plan(&goals(0, 0), &st, 1);
        assert_eq!(starts[0].mac, mac(2));
    }

    #[test]
    fn a_fast_station_waits_until_every_other_has_started_as_many_cycles() {
        let mut st = stations(3);
        // Station 0 finished its second cycle; station 1 runs its second, station 2
        // still its first.
        st[0].cycles_done = 2;
        st[1].cycles_done = 1;
        st[1].in_flight = Some(vec![Family::Windows]);
        st[2].cycles_done = 0;
        st[2].in_flight = Some(vec![Family::Windows]);
        assert!(
            plan(&goals(0, 0), &st, 5).is_empty(),
            "station 0 would run two ahead"
        );
        st[2].cycles_done = 1;
        st[2].in_flight = None;
        let starts = plan(&goals(0, 0), &st, 5);
        let macs: Vec<MacAddr> = starts.iter().map(|s| s.mac).collect();
        assert_eq!(macs, vec![mac(2)], "station 2 catches up first");
        // An unreachable station holds nobody back.
        st[2].eligible = false;
        let starts = plan(&goals(0, 0), &st, 5);
        assert_eq!(
            starts.iter().map(|s| s.mac).collect::<Vec<_>>(),
            vec![mac(0)]
        );
    }

    #[test]
    fn too_few_registered_stations_refuse_the_family_with_the_reason() {
        let err = guard(Family::Windows, 24).unwrap_err().to_string();
        assert!(
            err.contains("only 24") && err.contains("25") && err.contains("MAK"),
            "{err}"
        );
        assert!(guard(Family::Windows, 25).is_ok());
        assert!(guard(Family::Office, 4).is_err());
        assert!(guard(Family::Office, 5).is_ok());
    }

    #[test]
    fn the_lower_bound_is_need_over_the_lanes_rounded_up() {
        assert_eq!(lower_bound_cycles(27, 5, 8), 6);
        assert_eq!(lower_bound_cycles(27, 30, 5), 6);
        assert_eq!(lower_bound_cycles(25, 5, 5), 5);
        assert_eq!(lower_bound_cycles(0, 5, 5), 0);
        assert_eq!(lower_bound_cycles(3, 0, 5), 3, "no division by zero");
    }
}
