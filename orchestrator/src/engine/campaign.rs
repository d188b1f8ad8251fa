//! A KMS campaign as a state machine: events in (a tick of the clock, a station seen
//! at PXE, a restore's progress, an agent's report), actions out (reset and wake a
//! station, reboot it through its agent, cancel its reset). Pure and deterministic:
//! the runner persists the campaign after every event, before it carries out the
//! actions, so a restarted daemon resumes where it stopped (ARCHITECTURE.md, invariants).
//!
//! Station lifecycle: idle → waking (WoL sent or reboot queued) → pxe → restoring →
//! booting-os (restored, waiting for the agent's reports) → idle, or the next cycle.
//! Failure edges: no PXE boot after the wake attempts → unreachable; a restore that
//! fails or stalls, retried, then → quarantined; no report in time → woken once (it may
//! have lost its power after the restore), then → quarantined; a
//! logged-in user → in-use, until the user logs off. Stations out of the campaign keep their reason, and the
//! planner re-plans on the others.

use std::collections::BTreeMap;
use std::time::Duration;

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::planner::{self, Goal};
use super::{Family, COUNT_INSUFFICIENT};

/// Seconds and attempts before a stage counts as failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// From wake (or reboot) to the station's PXE boot.
    pub wake_s: u64,
    pub wake_attempts: u32,
    /// From PXE to the end of the restore, with no progress in between.
    pub restore_s: u64,
    pub restore_attempts: u32,
    /// From the restore's end to the agent's last report of the cycle.
    pub report_s: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wake_s: 300,
            wake_attempts: 3,
            restore_s: 1800,
            restore_attempts: 2,
            // Windows boots, then the agent retries activation for up to 30 minutes
            // (the network may come up late) before it says the host did not answer.
            report_s: 2700,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    Waking {
        attempt: u32,
    },
    Pxe,
    Restoring,
    BootingOs {
        reported: Vec<Family>,
        /// Woken once because nothing came within the report timeout (its power may
        /// have gone after the restore's last report).
        #[serde(default)]
        woken: bool,
    },
    Unreachable {
        reason: String,
    },
    Quarantined {
        reason: String,
    },
    InUse,
}

impl Phase {
    fn out(&self) -> bool {
        matches!(
            self,
            Phase::Unreachable { .. } | Phase::Quarantined { .. } | Phase::InUse
        )
    }

    fn in_cycle(&self) -> bool {
        !matches!(self, Phase::Idle) && !self.out()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationRun {
    pub mac: MacAddr,
    pub phase: Phase,
    /// When the station entered its phase (or last showed progress).
    pub since: u64,
    pub cycles_done: u32,
    /// The families of the cycle it runs.
    pub families: Vec<Family>,
    pub restore_failures: u32,
    /// Whether the station runs an agent now (reboot it) or is off (wake it).
    pub powered_on: bool,
    /// The reset generation marked for the cycle it runs, once the mark is made.
    #[serde(default)]
    pub generation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    Running,
    Done,
    Stopped { reason: String },
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub image: String,
    pub targets: BTreeMap<Family, u32>,
    /// The highest count reported per family during the campaign.
    pub reported: BTreeMap<Family, u32>,
    pub max_parallel: usize,
    pub limits: Limits,
    pub stations: Vec<StationRun>,
    pub state: State,
    pub cycles_started: u32,
    /// Outside its window: cycles under way go on, no new one starts.
    #[serde(default)]
    pub paused: bool,
    /// Per family, the cycles in a row whose activation the host did not count
    /// (no answer, clocks apart, host not activated, ...), and the last result.
    #[serde(default)]
    pub failed_in_a_row: BTreeMap<Family, (u32, Option<u32>)>,
    /// Families whose count the campaign does not know yet (the ledger has no count
    /// younger than a week): they run one cycle, on one station, until its report
    /// shows the host's count, so the first full wave cannot pass the target.
    #[serde(default)]
    pub probing: Vec<Family>,
}

/// Cycles in a row a family's activation may fail before the campaign stops: each
/// one is a whole reset, and the same cause fails the next one too.
pub const FAILED_IN_A_ROW: u32 = 3;

/// Why activations fail, from the result code, for the admin.
fn activation_failure(family: Family, result: Option<u32>, times: u32) -> String {
    let cause = match result {
        None | Some(0xC004_F074) => "the KMS host did not answer (0xC004F074 or no reply): can the lab reach kms.host on its port (1688) through the firewall, and is the Software Protection service running there?".to_owned(),
        Some(0xC004_F06C) => "the stations' clocks and the KMS host's are more than 4 hours apart (0xC004F06C): set the time (UTC, NTP) on the host and in the image".to_owned(),
        Some(0xC004_F039) => "the KMS host is not responding (0xC004F039)".to_owned(),
        Some(0xC004_F041) => "the KMS host is not activated itself (0xC004F041): activate its host key".to_owned(),
        Some(0xC004_F042) => format!("the KMS host cannot activate this {family} product (0xC004F042): install the host key for it"),
        Some(code) => format!("activation failed with 0x{code:08X}"),
    };
    format!("{family} activation failed in {times} cycles in a row, so more resets would not raise the count: {cause}")
}

/// Why a station's licence stops the campaign, for the admin.
fn not_kms_client(image: &str, mac: MacAddr, family: Family, channel: &str) -> String {
    if channel.is_empty() {
        return format!(
            "image {image}: {mac} has no licensed {family} product, so it cannot activate {family} by KMS: install {family} with its KMS client key (GVLK) in the image, or take {family} off the campaign"
        );
    }
    format!(
        "image {image}: {family} on {mac} is not a volume KMS client (licence channel {channel}), so resets do not raise the KMS count; netreset never activates such a licence (a MAK would spend its activations). Install the KMS client key (GVLK) in the image"
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The clock: timeouts are checked.
    Tick,
    /// The station asked for its boot script (it is in the restore environment next).
    PxeSeen(MacAddr),
    RestoreProgress(MacAddr),
    RestoreDone(MacAddr),
    RestoreFailed(MacAddr, String),
    /// An agent's report of the cycle's activation.
    Report {
        mac: MacAddr,
        /// The reset generation of the agent's token: a count is taken only from
        /// the cycle this campaign reset the station for.
        generation: u64,
        family: Family,
        /// The result of event 12289, or `None`: the KMS host never answered (a
        /// 12288 without a 12289).
        result: Option<u32>,
        /// The host's count; only meaningful when the host counted the request.
        count: u32,
        /// The same CMID as in an earlier cycle: the image is not generalized.
        duplicate_cmid: bool,
    },
    /// The station's licence of `family` is no volume KMS client (MAK, retail,
    /// subscription; `channel` as Windows names it), or it has none; from the image
    /// of reset `generation`.
    NotKmsClient {
        mac: MacAddr,
        generation: u64,
        family: Family,
        channel: String,
    },
    /// The agent says a user is logged on.
    InUse(MacAddr),
    /// The agent says nobody is logged on (any more).
    Free(MacAddr),
    /// The reset of the station's cycle was marked, with this generation.
    Marked(MacAddr, u64),
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Mark the station for a KMS reset activating these families.
    Reset { mac: MacAddr, families: Vec<Family> },
    /// Wake-on-LAN.
    Wake(MacAddr),
    /// A reboot command through the agent.
    Reboot(MacAddr),
    /// Withdraw the station's pending reset (it dropped out).
    CancelReset(MacAddr),
}

impl Campaign {
    /// A campaign over `stations` to `threshold + margin` for each family.
    pub fn new(
        image: &str,
        families: &[Family],
        margin: u32,
        stations: &[(MacAddr, bool)],
        max_parallel: usize,
        limits: Limits,
    ) -> Campaign {
        Campaign {
            image: image.to_owned(),
            targets: families
                .iter()
                .map(|f| (*f, f.threshold() + margin))
                .collect(),
            reported: families.iter().map(|f| (*f, 0)).collect(),
            max_parallel: max_parallel.max(1),
            limits,
            stations: stations
                .iter()
                .map(|&(mac, powered_on)| StationRun {
                    mac,
                    phase: Phase::Idle,
                    since: 0,
                    cycles_done: 0,
                    families: Vec::new(),
                    restore_failures: 0,
                    powered_on,
                    generation: None,
                })
                .collect(),
            state: State::Running,
            cycles_started: 0,
            paused: false,
            failed_in_a_row: BTreeMap::new(),
            probing: Vec::new(),
        }
    }

    fn station(&mut self, mac: MacAddr) -> Option<&mut StationRun> {
        self.stations.iter_mut().find(|s| s.mac == mac)
    }

    /// Whether every family has reached its target.
    pub fn reached(&self) -> bool {
        self.targets
            .iter()
            .all(|(f, t)| self.reported.get(f).copied().unwrap_or(0) >= *t)
    }

    /// Take `event` at time `now` (seconds); the actions to carry out, after the
    /// campaign is saved.
    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state != State::Running {
            return actions;
        }
        match event {
            Event::Tick => self.timeouts(now, &mut actions),
            Event::PxeSeen(mac) => {
                if let Some(s) = self.station(mac) {
                    if matches!(s.phase, Phase::Waking { .. }) {
                        s.phase = Phase::Pxe;
                        s.since = now;
                        s.powered_on = false;
                    }
                }
            }
            Event::RestoreProgress(mac) => {
                if let Some(s) = self.station(mac) {
                    if matches!(
                        s.phase,
                        Phase::Waking { .. } | Phase::Pxe | Phase::Restoring
                    ) {
                        s.phase = Phase::Restoring;
                        s.since = now;
                    }
                }
            }
            Event::RestoreDone(mac) => {
                if let Some(s) = self.station(mac) {
                    // Said again (a rerun, a recovery) it changes nothing.
                    if s.phase.in_cycle() && !matches!(s.phase, Phase::BootingOs { .. }) {
                        s.phase = Phase::BootingOs {
                            reported: Vec::new(),
                            woken: false,
                        };
                        s.since = now;
                    }
                }
            }
            Event::RestoreFailed(mac, why) => {
                let attempts = self.limits.restore_attempts;
                if let Some(s) = self.station(mac) {
                    if s.phase.in_cycle() {
                        restore_failed(s, &why, attempts, now, &mut actions);
                    }
                }
            }
            Event::Report {
                mac,
                generation,
                family,
                result,
                count,
                duplicate_cmid,
            } => {
                // A station of this campaign, reporting on the cycle it was reset for.
                let ours = self
                    .stations
                    .iter()
                    .any(|s| s.mac == mac && s.generation == Some(generation));
                if !ours {
                    return actions;
                }
                let counted = matches!(result, Some(0 | COUNT_INSUFFICIENT));
                if counted {
                    self.probing.retain(|f| *f != family);
                }
                // Reports of one host's count may arrive out of order; within a
                // campaign the count only grows, so the highest is the newest.
                if counted {
                    let known = self.reported.entry(family).or_insert(0);
                    *known = (*known).max(count);
                }
                // Once per cycle (a report sent again after a crash is not a
                // second failure).
                let first = self.station(mac).is_some_and(|s| {
                    matches!(&s.phase, Phase::BootingOs { reported, .. } if !reported.contains(&family))
                });
                if first && counted {
                    self.failed_in_a_row.remove(&family);
                } else if first {
                    let failed = self.failed_in_a_row.entry(family).or_insert((0, None));
                    *failed = (failed.0 + 1, result);
                    if failed.0 >= FAILED_IN_A_ROW {
                        self.state = State::Stopped {
                            reason: activation_failure(family, result, failed.0),
                        };
                        return actions;
                    }
                }
                if duplicate_cmid {
                    self.state = State::Stopped {
                        reason: format!(
                            "image {} is not generalized (sysprep /generalize): {mac} reported the same {family} CMID in two cycles, so resets do not raise the KMS count",
                            self.image
                        ),
                    };
                    return actions;
                }
                if let Some(s) = self.station(mac) {
                    s.powered_on = true;
                    if let Phase::BootingOs { reported, .. } = &mut s.phase {
                        if !reported.contains(&family) {
                            reported.push(family);
                        }
                        if s.families.iter().all(|f| reported.contains(f)) {
                            s.phase = Phase::Idle;
                            s.cycles_done += 1;
                            s.families.clear();
                            s.since = now;
                        }
                    }
                }
            }
            Event::NotKmsClient {
                mac,
                generation,
                family,
                channel,
            } => {
                // Only the image this campaign restored speaks for its image.
                if self
                    .stations
                    .iter()
                    .any(|s| s.mac == mac && s.generation == Some(generation))
                {
                    self.state = State::Stopped {
                        reason: not_kms_client(&self.image, mac, family, &channel),
                    };
                }
                return actions;
            }
            Event::InUse(mac) => {
                if let Some(s) = self.station(mac) {
                    if matches!(s.phase, Phase::Idle | Phase::Waking { .. }) {
                        if s.phase != Phase::Idle {
                            actions.push(Action::CancelReset(mac));
                        }
                        s.phase = Phase::InUse;
                        s.families.clear();
                        s.since = now;
                    }
                }
            }
            // The user logged off: the station is back in the campaign.
            Event::Free(mac) => {
                if let Some(s) = self.station(mac) {
                    if s.phase == Phase::InUse {
                        s.phase = Phase::Idle;
                        s.since = now;
                    }
                }
            }
            Event::Marked(mac, generation) => {
                if let Some(s) = self.station(mac) {
                    if s.phase.in_cycle() {
                        s.generation = Some(generation);
                    }
                }
                return actions;
            }
            Event::Cancel => {
                self.state = State::Cancelled;
                return actions;
            }
        }
        self.advance(now, &mut actions);
        actions
    }

    fn timeouts(&mut self, now: u64, actions: &mut Vec<Action>) {
        let limits = self.limits.clone();
        for s in &mut self.stations {
            let waited = now.saturating_sub(s.since);
            match s.phase.clone() {
                Phase::Waking { attempt } if waited >= limits.wake_s => {
                    if attempt < limits.wake_attempts {
                        s.phase = Phase::Waking {
                            attempt: attempt + 1,
                        };
                        s.since = now;
                        actions.push(wake(s));
                    } else {
                        s.phase = Phase::Unreachable {
                            reason: format!(
                                "no PXE boot after {attempt} wake attempts {} s apart (Wake-on-LAN on in the BIOS? network boot first?)",
                                limits.wake_s
                            ),
                        };
                        s.families.clear();
                        actions.push(Action::CancelReset(s.mac));
                    }
                }
                Phase::Pxe | Phase::Restoring if waited >= limits.restore_s => {
                    let why = format!("no restore progress for {waited} s");
                    restore_failed(s, &why, limits.restore_attempts, now, actions);
                }
                // Nothing at all from the restored station: it may be off (its power
                // went after the restore's last report, or it shut down instead of
                // restarting). Wake it once; its firmware boots the restored disk.
                Phase::BootingOs {
                    reported,
                    woken: false,
                } if waited >= limits.report_s && reported.is_empty() => {
                    s.phase = Phase::BootingOs {
                        reported,
                        woken: true,
                    };
                    s.since = now;
                    actions.push(wake(s));
                }
                Phase::BootingOs { woken, .. } if waited >= limits.report_s => {
                    s.phase = Phase::Quarantined {
                        reason: format!(
                            "restored, but no activation report within {} s{} (does Windows boot? does the agent reach the server?)",
                            limits.report_s,
                            if woken { ", nor after a wake" } else { "" }
                        ),
                    };
                    s.families.clear();
                }
                _ => {}
            }
        }
    }

    /// Finish, or start the cycles the planner asks for, or stop when no station is
    /// left to run them.
    fn advance(&mut self, now: u64, actions: &mut Vec<Action>) {
        if self.reached() {
            self.state = State::Done;
            return;
        }
        if self.paused {
            return;
        }
        let goals: Vec<Goal> = self
            .targets
            .iter()
            .map(|(f, t)| {
                let reported = self.reported.get(f).copied().unwrap_or(0);
                // After a failed activation the family runs one cycle at a time (the
                // cycles under way first): a probe, not a wave of resets that fail
                // for the same cause. So does a family whose count is not known yet.
                let failing = self.failed_in_a_row.get(f).is_some_and(|(n, _)| *n > 0)
                    || self.probing.contains(f);
                let in_flight = self
                    .stations
                    .iter()
                    .filter(|s| s.phase.in_cycle() && s.families.contains(f))
                    .count() as u32;
                let target = if failing {
                    (*t).min(reported + in_flight.max(1))
                } else {
                    *t
                };
                Goal {
                    family: *f,
                    target,
                    reported,
                }
            })
            .collect();
        let view: Vec<planner::Station> = self
            .stations
            .iter()
            .map(|s| planner::Station {
                mac: s.mac,
                cycles_done: s.cycles_done,
                in_flight: s.phase.in_cycle().then(|| s.families.clone()),
                eligible: !s.phase.out(),
            })
            .collect();
        for start in planner::plan(&goals, &view, self.max_parallel) {
            let s = self.station(start.mac).expect("planned station");
            s.phase = Phase::Waking { attempt: 1 };
            s.since = now;
            s.families = start.families.clone();
            s.generation = None;
            actions.push(Action::Reset {
                mac: start.mac,
                families: start.families,
            });
            let s = self.station(start.mac).expect("planned station");
            actions.push(wake(s));
            self.cycles_started += 1;
        }
        let busy = self.stations.iter().any(|s| s.phase.in_cycle());
        let left = self.stations.iter().any(|s| !s.phase.out());
        // Stations in use come back when their user logs off: the campaign waits.
        let in_use = self.stations.iter().any(|s| s.phase == Phase::InUse);
        if !busy && !left && !in_use {
            let count =
                |f: fn(&Phase) -> bool| self.stations.iter().filter(|s| f(&s.phase)).count();
            self.state = State::Stopped {
                reason: format!(
                    "no station left to run cycles: {} unreachable, {} quarantined",
                    count(|p| matches!(p, Phase::Unreachable { .. })),
                    count(|p| matches!(p, Phase::Quarantined { .. })),
                ),
            };
        }
    }
}

fn wake(s: &StationRun) -> Action {
    if s.powered_on {
        Action::Reboot(s.mac)
    } else {
        Action::Wake(s.mac)
    }
}

fn restore_failed(
    s: &mut StationRun,
    why: &str,
    attempts: u32,
    now: u64,
    actions: &mut Vec<Action>,
) {
    s.restore_failures += 1;
    if s.restore_failures >= attempts {
        s.phase = Phase::Quarantined {
            reason: format!("restore failed {} times, last: {why}", s.restore_failures),
        };
        s.families.clear();
        actions.push(Action::CancelReset(s.mac));
    } else {
        // The reset stays marked: the station's next PXE boot restores again.
        s.phase = Phase::Waking { attempt: 1 };
        s.since = now;
        s.powered_on = false;
        actions.push(Action::Wake(s.mac));
    }
}

/// A campaign as stored and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub families: Vec<Family>,
    pub margin: u32,
    /// Runs its cycles in the overnight windows only.
    #[serde(default)]
    pub window: bool,
    /// A top-up: its counts are what the ledger projects for this moment (Unix
    /// seconds), the end of the school day it must carry, not the host's count now,
    /// which still holds CMIDs about to age out.
    #[serde(default)]
    pub horizon: Option<u64>,
    pub campaign: Campaign,
}

/// Campaign settings from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub max_parallel: usize,
    pub limits: Limits,
    pub tick: Duration,
    /// How often the keep-alive looks at the ledger's projection.
    pub keepalive_check: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_parallel: 5,
            limits: Limits::default(),
            tick: Duration::from_secs(1),
            keepalive_check: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kms_host::{KmsHost, Product};
    use std::time::Duration;

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 1, i])
    }

    /// A world that carries out the actions: stations wake (unless dead), restore and
    /// report to a model KMS host, one step per tick of 10 s. `same_cmid` models a
    /// non-generalized image.
    struct World {
        host: KmsHost,
        dead: Vec<MacAddr>,
        same_cmid: bool,
        resets: BTreeMap<MacAddr, u32>,
        ledger: crate::engine::ledger::Ledger,
        /// Stations on their way: (mac, step) with step 0 = woken.
        moving: Vec<(MacAddr, u8, Vec<Family>)>,
        started_after_target: u32,
        /// The reset marks made and not yet told to the campaign.
        marks: Vec<(MacAddr, u64)>,
        generations: BTreeMap<MacAddr, u64>,
        next_generation: u64,
    }

    impl World {
        fn new(dead: &[MacAddr], same_cmid: bool) -> World {
            World {
                host: KmsHost::new(),
                dead: dead.to_vec(),
                same_cmid,
                resets: BTreeMap::new(),
                ledger: Default::default(),
                moving: Vec::new(),
                started_after_target: 0,
                marks: Vec::new(),
                generations: BTreeMap::new(),
                next_generation: 100,
            }
        }

        fn act(&mut self, c: &Campaign, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Reset { mac, families } => {
                        for f in &families {
                            if c.reported.get(f).copied().unwrap_or(0) >= c.targets[f] {
                                self.started_after_target += 1;
                            }
                        }
                        *self.resets.entry(mac).or_default() += 1;
                        self.next_generation += 1;
                        self.generations.insert(mac, self.next_generation);
                        self.marks.push((mac, self.next_generation));
                        self.moving.retain(|m| m.0 != mac);
                        self.moving.push((mac, 0, families));
                    }
                    Action::Wake(_) | Action::Reboot(_) => {}
                    Action::CancelReset(mac) => self.moving.retain(|m| m.0 != mac),
                }
            }
        }

        /// One step of every moving station: the events it causes.
        fn step(&mut self, now: u64) -> Vec<Event> {
            let mut events: Vec<Event> = self
                .marks
                .drain(..)
                .map(|(mac, g)| Event::Marked(mac, g))
                .collect();
            let mut still = Vec::new();
            for (mac, step, families) in std::mem::take(&mut self.moving) {
                if self.dead.contains(&mac) {
                    still.push((mac, step, families));
                    continue;
                }
                match step {
                    0 => events.push(Event::PxeSeen(mac)),
                    1 => events.push(Event::RestoreProgress(mac)),
                    2 => events.push(Event::RestoreDone(mac)),
                    _ => {
                        let cycle = self.resets[&mac];
                        for f in &families {
                            let cmid = if self.same_cmid {
                                format!("{mac}-{f}")
                            } else {
                                format!("{mac}-{f}-{cycle}")
                            };
                            let product = match f {
                                Family::Windows => Product::WindowsClient,
                                Family::Office => Product::Office,
                            };
                            let t = Duration::from_secs(now);
                            let reply = self.host.request(&cmid, product, t, t);
                            let duplicate = self.ledger.add(crate::engine::ledger::Report {
                                at: now,
                                station: mac,
                                family: *f,
                                cmid,
                                result: reply.result,
                                activated: reply.activated,
                                count: reply.count as u32,
                                cycle: u64::from(cycle),
                                last: 0,
                            });
                            let duplicate =
                                matches!(duplicate, crate::engine::ledger::Added::Duplicate(_));
                            events.push(Event::Report {
                                mac,
                                generation: self.generations[&mac],
                                family: *f,
                                result: Some(reply.result),
                                count: reply.count as u32,
                                duplicate_cmid: duplicate,
                            });
                        }
                        continue;
                    }
                }
                still.push((mac, step + 1, families));
            }
            self.moving = still;
            events
        }
    }

    /// Run until the campaign ends (or 10,000 ticks).
    fn run(c: &mut Campaign, world: &mut World) -> u64 {
        let mut now = 0;
        let first = c.handle(Event::Tick, now);
        world.act(c, first);
        while c.state == State::Running && now < 100_000 {
            now += 10;
            for e in world.step(now) {
                let actions = c.handle(e, now);
                world.act(c, actions);
            }
            let actions = c.handle(Event::Tick, now);
            world.act(c, actions);
        }
        now
    }

    fn five_stations() -> Vec<(MacAddr, bool)> {
        (0..5).map(|i| (mac(i), false)).collect()
    }

    #[test]
    fn five_stations_reach_exactly_27_and_7_with_even_cycles_and_nothing_after() {
        let mut c = Campaign::new(
            "win11",
            &[Family::Windows, Family::Office],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        let mut world = World::new(&[], false);
        run(&mut c, &mut world);
        assert_eq!(c.state, State::Done);
        let now = Duration::from_secs(200_000);
        assert_eq!(world.host.current_count(Product::WindowsClient, now), 27);
        assert_eq!(world.host.current_count(Product::Office, now), 7);
        assert_eq!(world.started_after_target, 0);
        let cycles: Vec<u32> = c.stations.iter().map(|s| s.cycles_done).collect();
        let (lo, hi) = (cycles.iter().min().unwrap(), cycles.iter().max().unwrap());
        assert!(hi - lo <= 1, "{cycles:?}");
        assert_eq!(c.cycles_started, 27);
    }

    #[test]
    fn two_stations_that_never_wake_are_unreachable_and_the_other_three_finish() {
        let mut c = Campaign::new(
            "win11",
            &[Family::Windows, Family::Office],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        let mut world = World::new(&[mac(1), mac(3)], false);
        run(&mut c, &mut world);
        assert_eq!(c.state, State::Done);
        for s in &c.stations {
            let dead = s.mac == mac(1) || s.mac == mac(3);
            match &s.phase {
                Phase::Unreachable { reason } => {
                    assert!(dead, "{}", s.mac);
                    assert!(reason.contains("3 wake attempts"), "{reason}");
                }
                other => assert!(!dead, "{}: {other:?}", s.mac),
            }
        }
        let now = Duration::from_secs(200_000);
        assert_eq!(world.host.current_count(Product::WindowsClient, now), 27);
    }

    #[test]
    fn a_non_generalized_image_stops_the_campaign_after_the_second_cycle() {
        let mut c = Campaign::new(
            "win11-golden",
            &[Family::Windows],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        let mut world = World::new(&[], true);
        run(&mut c, &mut world);
        let State::Stopped { reason } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert!(
            reason.contains("image win11-golden is not generalized (sysprep /generalize)"),
            "{reason}"
        );
        assert!(
            c.stations.iter().all(|s| s.cycles_done <= 1),
            "stopped in the second cycle"
        );
    }

    #[test]
    fn running_stations_are_rebooted_off_ones_woken_and_failed_restores_retried_then_quarantined() {
        let stations = [(mac(0), true), (mac(1), false)];
        let mut c = Campaign::new("w", &[Family::Office], 0, &stations, 2, Limits::default());
        let actions = c.handle(Event::Tick, 0);
        assert!(actions.contains(&Action::Reboot(mac(0))), "{actions:?}");
        assert!(actions.contains(&Action::Wake(mac(1))), "{actions:?}");
        c.handle(Event::PxeSeen(mac(1)), 5);
        let actions = c.handle(Event::RestoreFailed(mac(1), "disk too small".into()), 6);
        assert_eq!(actions, vec![Action::Wake(mac(1))], "retried");
        c.handle(Event::PxeSeen(mac(1)), 7);
        let actions = c.handle(Event::RestoreFailed(mac(1), "disk too small".into()), 8);
        assert!(
            actions.contains(&Action::CancelReset(mac(1))),
            "{actions:?}"
        );
        match &c.stations[1].phase {
            Phase::Quarantined { reason } => assert!(
                reason.contains("failed 2 times, last: disk too small"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restored_station_that_never_reports_is_woken_once_then_quarantined() {
        let limits = Limits::default();
        let r = limits.report_s;
        let stations = [(mac(0), false), (mac(1), false)];
        let mut c = Campaign::new("w", &[Family::Office], 0, &stations, 2, limits);
        c.handle(Event::Tick, 0);
        for m in [mac(0), mac(1)] {
            c.handle(Event::PxeSeen(m), 1);
            c.handle(Event::RestoreDone(m), 2);
        }
        mark(&mut c);
        // mac(1) reports; mac(0) lost its power after the restore and is silent.
        c.handle(
            Event::Report {
                mac: mac(1),
                generation: generation(&c, mac(1)),
                family: Family::Office,
                result: Some(COUNT_INSUFFICIENT),
                count: 1,
                duplicate_cmid: false,
            },
            3,
        );
        let actions = c.handle(Event::Tick, 2 + r);
        assert!(actions.contains(&Action::Wake(mac(0))), "{actions:?}");
        assert!(
            matches!(c.stations[0].phase, Phase::BootingOs { .. }),
            "{:?}",
            c.stations[0].phase
        );
        let actions = c.handle(Event::Tick, 2 + r + r / 2);
        assert!(!actions.contains(&Action::Wake(mac(0))), "woken once");
        c.handle(Event::Tick, 3 + 2 * r);
        match &c.stations[0].phase {
            Phase::Quarantined { reason } => {
                assert!(reason.contains("nor after a wake"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_station_woken_after_its_restore_that_reports_finishes_its_cycle() {
        let limits = Limits::default();
        let r = limits.report_s;
        let stations = [(mac(0), false)];
        let mut c = Campaign::new("w", &[Family::Office], 0, &stations, 1, limits);
        c.handle(Event::Tick, 0);
        c.handle(Event::PxeSeen(mac(0)), 1);
        c.handle(Event::RestoreDone(mac(0)), 2);
        mark(&mut c);
        c.handle(Event::Tick, 2 + r);
        c.handle(
            Event::Report {
                mac: mac(0),
                generation: generation(&c, mac(0)),
                family: Family::Office,
                result: Some(COUNT_INSUFFICIENT),
                count: 1,
                duplicate_cmid: false,
            },
            3 + r,
        );
        assert_eq!(c.stations[0].cycles_done, 1, "{:?}", c.stations[0].phase);
        assert_eq!(
            c.stations[0].phase,
            Phase::Waking { attempt: 1 },
            "its next cycle"
        );
    }

    #[test]
    fn a_lower_count_arriving_late_does_not_plan_an_extra_cycle() {
        let stations = [(mac(0), false), (mac(1), false)];
        let mut c = Campaign::new("w", &[Family::Office], 0, &stations, 2, Limits::default());
        c.handle(Event::Tick, 0);
        for m in [mac(0), mac(1)] {
            c.handle(Event::PxeSeen(m), 1);
            c.handle(Event::RestoreDone(m), 2);
        }
        c.reported.insert(Family::Office, 3);
        mark(&mut c);
        c.handle(
            Event::Report {
                mac: mac(1),
                generation: generation(&c, mac(1)),
                family: Family::Office,
                result: Some(0),
                count: 5,
                duplicate_cmid: false,
            },
            3,
        );
        assert_eq!(c.state, State::Done, "5 reached");
        let mut late = c.clone();
        late.state = State::Running;
        late.handle(
            Event::Report {
                mac: mac(0),
                generation: generation(&late, mac(0)),
                family: Family::Office,
                result: Some(COUNT_INSUFFICIENT),
                count: 4,
                duplicate_cmid: false,
            },
            4,
        );
        assert_eq!(
            late.reported[&Family::Office],
            5,
            "the late, lower count is not the newest"
        );
    }

    /// Tell the campaign the reset marks of the cycles it started (generation 1000
    /// + the station's last octet, + 100 per cycle).
    fn mark(c: &mut Campaign) {
        let unmarked: Vec<(MacAddr, u32)> = c
            .stations
            .iter()
            .filter(|s| s.phase.in_cycle() && s.generation.is_none())
            .map(|s| (s.mac, s.cycles_done))
            .collect();
        for (m, done) in unmarked {
            let g = 1000 + u64::from(m.octets()[5]) + 100 * u64::from(done);
            c.handle(Event::Marked(m, g), 0);
        }
    }

    /// The reset generation of the cycle `m` runs.
    fn generation(c: &Campaign, m: MacAddr) -> u64 {
        c.stations
            .iter()
            .find(|s| s.mac == m)
            .and_then(|s| s.generation)
            .expect("marked")
    }

    /// Drive the first cycle of `m` to its report.
    fn report(c: &mut Campaign, m: MacAddr, result: Option<u32>, count: u32, now: u64) {
        mark(c);
        c.handle(Event::PxeSeen(m), now);
        c.handle(Event::RestoreDone(m), now);
        c.handle(
            Event::Report {
                mac: m,
                generation: generation(c, m),
                family: Family::Office,
                result,
                count,
                duplicate_cmid: false,
            },
            now,
        );
    }

    #[test]
    fn activations_the_host_does_not_count_stop_the_campaign_after_three_in_a_row() {
        let mut c = Campaign::new(
            "w",
            &[Family::Office],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        c.handle(Event::Tick, 0);
        // A counted one between failures starts the row again.
        report(&mut c, mac(0), None, 0, 1);
        let busy = |c: &Campaign| c.stations.iter().filter(|s| s.phase.in_cycle()).count();
        assert_eq!(
            busy(&c),
            4,
            "after a failure no new cycle joins the four under way"
        );
        report(&mut c, mac(1), Some(0xC004_F074), 0, 2);
        report(&mut c, mac(2), Some(COUNT_INSUFFICIENT), 1, 3);
        assert_eq!(c.state, State::Running);
        assert_eq!(
            c.reported[&Family::Office],
            1,
            "failed reports count nothing"
        );
        report(&mut c, mac(3), None, 0, 4);
        // The same failed report sent again (a retry) is not a second failure.
        c.handle(
            Event::Report {
                mac: mac(3),
                generation: generation(&c, mac(3)),
                family: Family::Office,
                result: None,
                count: 0,
                duplicate_cmid: false,
            },
            5,
        );
        report(&mut c, mac(4), Some(0xC004_F074), 0, 6);
        assert_eq!(c.state, State::Running, "two in a row");
        // Cycles went on meanwhile (the count is short); the next one fails too.
        let next = c
            .stations
            .iter()
            .find(|s| matches!(s.phase, Phase::Waking { .. }))
            .map(|s| s.mac)
            .unwrap();
        report(&mut c, next, Some(0xC004_F074), 0, 8);
        let State::Stopped { reason } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert!(
            reason.contains("3 cycles in a row") && reason.contains("did not answer"),
            "{reason}"
        );
    }

    #[test]
    fn the_diagnosis_names_the_cause_of_the_result_code() {
        for (code, says) in [
            (Some(0xC004_F06C), "clocks"),
            (Some(0xC004_F041), "not activated itself"),
            (Some(0xC004_F042), "host key"),
            (None, "did not answer"),
            (Some(0x8007_0005), "0x80070005"),
        ] {
            let why = activation_failure(Family::Windows, code, 3);
            assert!(why.contains(says), "{code:?}: {why}");
        }
    }

    #[test]
    fn a_paused_campaign_starts_no_cycle_until_it_is_resumed() {
        let mut c = Campaign::new(
            "w",
            &[Family::Office],
            0,
            &five_stations(),
            5,
            Limits::default(),
        );
        c.paused = true;
        assert!(c.handle(Event::Tick, 0).is_empty());
        assert_eq!(c.state, State::Running, "waiting, not stopped");
        c.paused = false;
        assert_eq!(c.handle(Event::Tick, 1).len(), 10, "5 resets and 5 wakes");
    }

    #[test]
    fn a_station_in_use_waits_out_of_the_campaign_until_its_user_logs_off() {
        let stations = [(mac(0), true)];
        let mut c = Campaign::new("w", &[Family::Windows], 0, &stations, 1, Limits::default());
        c.handle(Event::Tick, 0);
        let actions = c.handle(Event::InUse(mac(0)), 1);
        assert_eq!(actions, vec![Action::CancelReset(mac(0))]);
        assert_eq!(c.stations[0].phase, Phase::InUse);
        assert!(c.handle(Event::Tick, 2).is_empty(), "nobody to run a cycle");
        assert_eq!(c.state, State::Running, "it waits for the user to log off");
        let actions = c.handle(Event::Free(mac(0)), 3);
        assert!(actions.contains(&Action::Reboot(mac(0))), "{actions:?}");
        assert!(matches!(c.stations[0].phase, Phase::Waking { .. }));
    }

    #[test]
    fn a_campaign_with_every_station_unreachable_stops_with_the_reason() {
        let stations = [(mac(0), false)];
        let limits = Limits {
            wake_attempts: 1,
            ..Limits::default()
        };
        let mut c = Campaign::new("w", &[Family::Windows], 0, &stations, 1, limits);
        c.handle(Event::Tick, 0);
        c.handle(Event::Tick, 301);
        let State::Stopped { reason } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert!(reason.contains("1 unreachable"), "{reason}");
    }

    #[test]
    fn a_cancelled_campaign_starts_nothing_more_and_survives_a_json_round_trip() {
        let mut c = Campaign::new(
            "w",
            &[Family::Windows],
            2,
            &five_stations(),
            2,
            Limits::default(),
        );
        c.handle(Event::Tick, 0);
        let saved = serde_json::to_string(&c).unwrap();
        let back: Campaign = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, c, "what the runner saves is what it resumes");
        assert!(c.handle(Event::Cancel, 1).is_empty());
        assert!(c.handle(Event::Tick, 1000).is_empty());
        assert_eq!(c.state, State::Cancelled);
    }

    #[test]
    fn a_report_of_a_cycle_this_campaign_did_not_reset_counts_nothing() {
        let stations = [(mac(0), false), (mac(1), false)];
        let mut c = Campaign::new("w", &[Family::Office], 0, &stations, 2, Limits::default());
        c.handle(Event::Tick, 0);
        mark(&mut c);
        c.handle(Event::PxeSeen(mac(0)), 1);
        c.handle(Event::RestoreDone(mac(0)), 2);
        let forged = Event::Report {
            mac: mac(0),
            generation: generation(&c, mac(0)) + 7,
            family: Family::Office,
            result: Some(0),
            count: 10,
            duplicate_cmid: false,
        };
        c.handle(forged, 3);
        assert_eq!(c.reported[&Family::Office], 0, "not this campaign's reset");
        assert_eq!(c.state, State::Running);
        let outsider = Event::Report {
            mac: mac(9),
            generation: 1,
            family: Family::Office,
            result: Some(0),
            count: 10,
            duplicate_cmid: false,
        };
        c.handle(outsider, 4);
        assert_eq!(
            c.reported[&Family::Office],
            0,
            "not a station of the campaign"
        );
    }

    #[test]
    fn a_licence_that_is_no_kms_client_stops_the_campaign_naming_the_channel() {
        let mut c = Campaign::new(
            "win11-mak",
            &[Family::Windows],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        c.handle(Event::Tick, 0);
        mark(&mut c);
        c.handle(
            Event::NotKmsClient {
                mac: mac(2),
                generation: generation(&c, mac(2)),
                family: Family::Windows,
                channel: "Volume:MAK".into(),
            },
            1,
        );
        let State::Stopped { reason } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert!(
            reason.contains("image win11-mak")
                && reason.contains("not a volume KMS client (licence channel Volume:MAK)")
                && !reason.contains("firewall"),
            "{reason}"
        );
    }

    #[test]
    fn an_unknown_starting_count_runs_one_probe_cycle_before_the_first_wave() {
        let mut c = Campaign::new(
            "win11",
            &[Family::Windows, Family::Office],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        c.probing = vec![Family::Windows, Family::Office];
        let first = c.handle(Event::Tick, 0);
        let resets: Vec<&Action> = first
            .iter()
            .filter(|a| matches!(a, Action::Reset { .. }))
            .collect();
        assert_eq!(resets.len(), 1, "one station probes: {first:?}");
        assert!(matches!(resets[0], Action::Reset { families, .. } if families.len() == 2));
        let probe = c.stations.iter().find(|s| s.phase.in_cycle()).unwrap().mac;
        mark(&mut c);
        c.handle(Event::PxeSeen(probe), 1);
        c.handle(Event::RestoreDone(probe), 2);
        for (family, count) in [(Family::Windows, 25), (Family::Office, 3)] {
            c.handle(
                Event::Report {
                    mac: probe,
                    generation: generation(&c, probe),
                    family,
                    result: Some(COUNT_INSUFFICIENT),
                    count,
                    duplicate_cmid: false,
                },
                3,
            );
        }
        assert!(c.probing.is_empty());
        let busy: Vec<&StationRun> = c.stations.iter().filter(|s| s.phase.in_cycle()).collect();
        // 27 - 25 = 2 Windows cycles and 7 - 3 = 4 Office ones: four stations.
        assert_eq!(busy.len(), 4, "the wave after the probe");
        let windows = busy
            .iter()
            .filter(|s| s.families.contains(&Family::Windows))
            .count();
        assert_eq!(windows, 2);
    }

    #[test]
    fn a_host_that_already_counts_24_unseen_clients_ends_at_exactly_27_after_a_probe() {
        let mut with_probe = Campaign::new(
            "win11",
            &[Family::Windows],
            2,
            &five_stations(),
            5,
            Limits::default(),
        );
        with_probe.probing = vec![Family::Windows];
        let mut without = with_probe.clone();
        without.probing.clear();
        let mut counts = Vec::new();
        for c in [&mut with_probe, &mut without] {
            let mut world = World::new(&[], false);
            // Staff PCs the ledger never saw.
            for i in 0..24 {
                let t = Duration::from_secs(0);
                world
                    .host
                    .request(&format!("staff-{i}"), Product::WindowsClient, t, t);
            }
            run(c, &mut world);
            assert_eq!(c.state, State::Done);
            let now = Duration::from_secs(200_000);
            counts.push(world.host.current_count(Product::WindowsClient, now));
        }
        assert_eq!(counts[0], 27, "with the probe");
        assert_eq!(counts[1], 29, "a blind first wave of 5 passes the target");
    }
}
