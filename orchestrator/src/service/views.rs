//! What the API shows of the store's records, typed: each view is the JSON of an
//! answer (and of a live event), and its schema in the OpenAPI document comes from
//! the same type, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::rfc3339;
use crate::engine::campaign::{Phase, Record, State};
use crate::engine::Family;
use crate::store::{Audit, Event, Reset, Station};

/// Where a station stands, for a grid coloured by state: its phase in a running
/// campaign, else its reset's, else whether a user is logged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StationState {
    /// Nothing under way.
    Idle,
    /// Marked for a reset: its next PXE boot restores.
    Pending,
    /// A campaign woke it (or asked its agent to restart) and waits for its PXE boot.
    Waking,
    /// It PXE-booted the restore environment.
    Pxe,
    /// Its restore is under way (see `percent`).
    Restoring,
    /// Restored, Windows boots; its agent has not reported yet.
    Booting,
    /// Its agent reported the cycle's activation.
    Reported,
    /// It did not answer Wake-on-LAN or its restore failed: out of the campaign.
    Unreachable,
    /// Out of the campaign: its reports were not believable.
    Quarantined,
    /// A user is logged on: it is not rebooted unless an admin forces it.
    InUse,
    /// Its last restore failed; its next PXE boot tries again.
    Failed,
}

impl StationState {
    /// The state a campaign phase shows.
    pub fn of_phase(phase: &Phase) -> Option<StationState> {
        Some(match phase {
            Phase::Idle => return None,
            Phase::Waking { .. } => StationState::Waking,
            Phase::Pxe => StationState::Pxe,
            Phase::Restoring => StationState::Restoring,
            Phase::BootingOs { reported, .. } if reported.is_empty() => StationState::Booting,
            Phase::BootingOs { .. } => StationState::Reported,
            Phase::Unreachable { .. } => StationState::Unreachable,
            Phase::Quarantined { .. } => StationState::Quarantined,
            Phase::InUse => StationState::InUse,
        })
    }

    /// The state of a station with this campaign phase (if it is in a running
    /// campaign) and this reset.
    pub fn of(station: &Station, phase: Option<&Phase>, reset: Option<&Reset>) -> StationState {
        use crate::store::ResetState;
        if let Some(state) = phase.and_then(StationState::of_phase) {
            return state;
        }
        match reset.map(|r| r.state) {
            Some(ResetState::Pending) => StationState::Pending,
            Some(ResetState::Restoring) => StationState::Restoring,
            Some(ResetState::Failed) => StationState::Failed,
            Some(ResetState::Done) | None if station.logged_in => StationState::InUse,
            Some(ResetState::Done) | None => StationState::Idle,
        }
    }
}

/// A station of the inventory.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StationView {
    /// The station's MAC address, lower case with colons; the key of its paths.
    #[schema(example = "52:54:00:12:34:56")]
    pub mac: String,
    pub name: Option<String>,
    pub room: Option<String>,
    /// Processor from DHCP option 93 (`x64`, `x86`, ...).
    pub arch: Option<String>,
    /// Firmware family (`bios`, `uefi`, `uefi-http`, ...).
    pub firmware: Option<String>,
    /// SMBIOS UUID from option 97, 32 hex digits.
    pub uuid: Option<String>,
    /// The IPv4 address it last had.
    pub ip: Option<String>,
    /// RFC 3339.
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// The image its resets restore when they name none.
    pub image: Option<String>,
    /// Its resets stage the KMS profile.
    pub kms_activation: bool,
    /// The disk its restores write; unset: `restore.disk`.
    pub disk: Option<String>,
    /// Its own Secure Boot setting (the signed boot path); unset: its room's, else
    /// `boot.secure_boot`. The station's page shows the result as `boot_loader`.
    pub secure_boot: Option<bool>,
    /// Its agent last said an interactive user is logged on.
    pub in_use: bool,
    /// Listed by the admin (configuration or `PUT`), not only seen on the LAN.
    pub confirmed: bool,
    /// RFC 3339 of its agent's last report.
    pub last_report: Option<String>,
    pub state: StationState,
    /// How far its restore is, when one is under way.
    pub percent: Option<f64>,
}

impl StationView {
    pub fn new(st: &Station, state: StationState, reset: Option<&Reset>) -> StationView {
        StationView {
            mac: st.mac.to_string(),
            name: st.name.clone(),
            room: st.room.clone(),
            arch: st.arch.clone(),
            firmware: st.firmware.clone(),
            uuid: st.uuid.clone(),
            ip: st.ip.map(|ip| ip.to_string()),
            first_seen: st.first_seen.map(rfc3339),
            last_seen: st.last_seen.map(rfc3339),
            image: st.image.clone(),
            kms_activation: st.kms_activation,
            disk: st.disk.clone(),
            secure_boot: st.secure_boot,
            in_use: st.logged_in,
            confirmed: st.confirmed,
            last_report: st.last_report.map(rfc3339),
            state,
            percent: reset
                .filter(|r| r.state.active() && r.total_bytes > 0)
                .map(|r| percent(r.done_bytes, r.total_bytes)),
        }
    }
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (done as f64 * 1000.0 / total as f64).round() / 10.0
}

/// A station with its reset and its recent events (`GET /api/v1/stations/{mac}`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StationDetail {
    #[serde(flatten)]
    pub station: StationView,
    /// What its firmware is given over the network: `ipxe`, or `signed` (shim, then
    /// GRUB, for Secure Boot), from its setting, its room's or the default.
    pub boot_loader: BootLoaderView,
    pub reset: Option<ResetView>,
    /// Its capture into a new image, if one was asked for.
    pub capture: Option<CaptureView>,
    /// Its boot path and restore history, oldest first.
    pub events: Vec<EventView>,
}

/// The loader a station's firmware is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BootLoaderView {
    /// Debian's iPXE, then its script over HTTP.
    Ipxe,
    /// Microsoft-signed shim, Debian-signed GRUB, its configuration over TFTP.
    Signed,
}

impl From<pxe::Loader> for BootLoaderView {
    fn from(l: pxe::Loader) -> BootLoaderView {
        match l {
            pxe::Loader::Ipxe => BootLoaderView::Ipxe,
            pxe::Loader::Signed => BootLoaderView::Signed,
        }
    }
}

/// One thing that happened to a station (a DHCP answer, a boot script, a restore).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventView {
    /// What: `dhcp`, `proxy`, `tftp`, `script`, `restore`, `report`, ...
    pub kind: String,
    /// RFC 3339.
    pub at: String,
    pub detail: String,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> EventView {
        EventView {
            kind: e.kind.clone(),
            at: rfc3339(e.at),
            detail: e.detail.clone(),
        }
    }
}

/// Where a reset stands (`pending`, `restoring`, `done`, `failed`).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetStateView {
    Pending,
    Restoring,
    Done,
    Failed,
}

impl From<crate::store::ResetState> for ResetStateView {
    fn from(s: crate::store::ResetState) -> ResetStateView {
        use crate::store::ResetState;
        match s {
            ResetState::Pending => ResetStateView::Pending,
            ResetState::Restoring => ResetStateView::Restoring,
            ResetState::Done => ResetStateView::Done,
            ResetState::Failed => ResetStateView::Failed,
        }
    }
}

/// A station's capture into a new image and how far it got (`restoring`: the disk
/// is being read and uploaded).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CaptureView {
    /// The station, in answers about one capture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// The image it makes.
    pub image: String,
    pub chunk_size: u32,
    pub disk: String,
    pub state: ResetStateView,
    pub percent: f64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// The capture client's figures (chunks read, uploaded, bytes uploaded, ...).
    pub stats: BTreeMap<String, serde_json::Value>,
    pub error: Option<String>,
    /// The index id of the image, once done.
    pub index: Option<String>,
    pub requested_at: String,
    pub updated_at: String,
}

impl CaptureView {
    pub fn new(c: &crate::store::Capture) -> CaptureView {
        CaptureView {
            station: None,
            image: c.name.clone(),
            chunk_size: c.chunk_size,
            disk: c.disk.clone(),
            state: c.state.into(),
            percent: percent(c.done_bytes, c.total_bytes),
            done_bytes: c.done_bytes,
            total_bytes: c.total_bytes,
            stats: c.stats.clone().into_iter().collect(),
            error: c.error.clone(),
            index: c.index.clone(),
            requested_at: rfc3339(c.requested_at),
            updated_at: rfc3339(c.updated_at),
        }
    }

    /// The view of `mac`'s capture, naming the station.
    pub fn of(mac: pxe::MacAddr, c: &crate::store::Capture) -> CaptureView {
        CaptureView {
            station: Some(mac.to_string()),
            ..CaptureView::new(c)
        }
    }
}

/// A station's reset to a staged image and how far its restore got.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ResetView {
    /// The station, in answers about one reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    pub image: String,
    /// `kms` or `plain`.
    pub profile: String,
    /// The staged image's id.
    pub staged: String,
    pub disk: Option<String>,
    pub state: ResetStateView,
    pub percent: f64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// The restore client's figures (bytes fetched, chunks in place, seconds, ...).
    pub stats: BTreeMap<String, serde_json::Value>,
    pub error: Option<String>,
    /// What the restore environment found: the station runs under Secure Boot (on
    /// UEFI; absent until its first report, and on BIOS).
    pub secure_boot: Option<bool>,
    /// The restore wave the reset is in (the stations of its room restoring the same
    /// image at once, which take chunks from each other); absent when peers are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<u64>,
    pub requested_at: String,
    pub updated_at: String,
}

/// A member of a restore wave, as the others are told of it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PeerView {
    /// The station's MAC: the name the seeder of each chunk is chosen by.
    pub station: String,
    /// Where its restore environment serves chunks (`10.1.1.23:7410`).
    pub address: String,
}

/// A restore's wave: its number, the token its members ask each other with, and the
/// members serving now (the caller not among them).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WaveView {
    /// `null`: the restore is in no wave (peers are off); it fetches from the server.
    pub wave: Option<u64>,
    pub token: Option<String>,
    pub peers: Vec<PeerView>,
}

impl ResetView {
    pub fn new(r: &Reset) -> ResetView {
        ResetView {
            station: None,
            image: r.image.clone(),
            profile: r.profile.clone(),
            staged: r.staged.clone(),
            disk: r.disk.clone(),
            state: r.state.into(),
            percent: percent(r.done_bytes, r.total_bytes),
            done_bytes: r.done_bytes,
            total_bytes: r.total_bytes,
            stats: r.stats.clone().into_iter().collect(),
            error: r.error.clone(),
            secure_boot: r.secure_boot,
            wave: r.wave,
            requested_at: rfc3339(r.requested_at),
            updated_at: rfc3339(r.updated_at),
        }
    }

    /// The view of `mac`'s reset, naming the station.
    pub fn of(mac: pxe::MacAddr, r: &Reset) -> ResetView {
        ResetView {
            station: Some(mac.to_string()),
            ..ResetView::new(r)
        }
    }
}

/// A KMS family: `windows` (client and server share the host's count) or `office`.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    Windows,
    Office,
}

/// Where a campaign is.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    Running,
    Done,
    Stopped,
    Cancelled,
}

/// A campaign's progress in one family.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FamilyProgress {
    /// The highest count the host reported during the campaign.
    pub reported: u32,
    pub target: u32,
    /// Stations in a cycle for this family now.
    pub in_flight: u32,
    /// Cycles still to start to reach the target.
    pub planned: u32,
}

/// A station's part in a campaign.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CampaignStation {
    pub mac: String,
    /// `idle`, `waking`, `pxe`, `restoring`, `booting-os`, `unreachable`,
    /// `quarantined`, `in-use`.
    pub phase: String,
    /// Wake-on-LAN attempts (waking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Families its agent reported (booting-os).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Vec<FamilyName>>,
    /// Why it is out (unreachable, quarantined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub cycles_done: u32,
    pub families: Vec<FamilyName>,
}

/// A KMS campaign.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: u64,
    pub state: CampaignState,
    /// Why it stopped (stopped only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub image: String,
    pub margin: u32,
    /// Per family (`windows`, `office`).
    pub families: BTreeMap<String, FamilyProgress>,
    pub cycles_done: u32,
    pub cycles_started: u32,
    /// `now` or `window` (its cycles run in the overnight windows only).
    pub start: String,
    /// Outside its window: cycles under way go on, no new one starts.
    pub waiting_for_window: bool,
    /// A top-up: the moment its counts must last to (RFC 3339).
    pub top_up_until: Option<String>,
    pub stations: Vec<CampaignStation>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn family(f: Family) -> FamilyName {
    match f {
        Family::Windows => FamilyName::Windows,
        Family::Office => FamilyName::Office,
    }
}

impl CampaignView {
    pub fn new(r: &Record) -> CampaignView {
        let c = &r.campaign;
        let in_flight = |f: Family| {
            c.stations
                .iter()
                .filter(|s| s.families.contains(&f) && !matches!(s.phase, Phase::Idle))
                .count() as u32
        };
        let families = c
            .targets
            .iter()
            .map(|(f, &target)| {
                let reported = c.reported.get(f).copied().unwrap_or(0);
                let in_flight = in_flight(*f);
                let progress = FamilyProgress {
                    reported,
                    target,
                    in_flight,
                    planned: target.saturating_sub(reported + in_flight),
                };
                (f.name().to_owned(), progress)
            })
            .collect();
        let stations = c
            .stations
            .iter()
            .map(|s| {
                let (phase, attempt, reported, reason) = match &s.phase {
                    Phase::Idle => ("idle", None, None, None),
                    Phase::Waking { attempt } => ("waking", Some(*attempt), None, None),
                    Phase::Pxe => ("pxe", None, None, None),
                    Phase::Restoring => ("restoring", None, None, None),
                    Phase::BootingOs { reported, .. } => (
                        "booting-os",
                        None,
                        Some(reported.iter().copied().map(family).collect()),
                        None,
                    ),
                    Phase::Unreachable { reason } => {
                        ("unreachable", None, None, Some(reason.clone()))
                    }
                    Phase::Quarantined { reason } => {
                        ("quarantined", None, None, Some(reason.clone()))
                    }
                    Phase::InUse => ("in-use", None, None, None),
                };
                CampaignStation {
                    mac: s.mac.to_string(),
                    phase: phase.to_owned(),
                    attempt,
                    reported,
                    reason,
                    cycles_done: s.cycles_done,
                    families: s.families.iter().copied().map(family).collect(),
                }
            })
            .collect();
        let (state, reason) = match &c.state {
            State::Running => (CampaignState::Running, None),
            State::Done => (CampaignState::Done, None),
            State::Stopped { reason } => (CampaignState::Stopped, Some(reason.clone())),
            State::Cancelled => (CampaignState::Cancelled, None),
        };
        CampaignView {
            id: r.id,
            state,
            reason,
            image: c.image.clone(),
            margin: r.margin,
            families,
            cycles_done: c.stations.iter().map(|s| s.cycles_done).sum(),
            cycles_started: c.cycles_started,
            start: if r.window { "window" } else { "now" }.to_owned(),
            waiting_for_window: c.paused,
            top_up_until: r.horizon.map(|h| rfc3339(h * 1000)),
            stations,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// One entry of the audit log.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Rises by one with every entry: `?since=` takes the last one seen.
    pub seq: u64,
    pub at: String,
    /// `reset`, `cancel-reset`, `capture`, `cancel-capture`, `station-settings`, `command`, `campaign-start`,
    /// `campaign-cancel`.
    pub action: String,
    /// The station's MAC or the campaign's id.
    pub target: String,
    /// The client's address.
    pub client: String,
    /// The HTTP status the call got (refused calls are logged too).
    pub status: u16,
}

impl From<&Audit> for AuditEntry {
    fn from(a: &Audit) -> AuditEntry {
        AuditEntry {
            seq: a.seq,
            at: rfc3339(a.at),
            action: a.action.clone(),
            target: a.target.clone(),
            client: a.client.clone(),
            status: a.status,
        }
    }
}

/// The audit log's newest entries, oldest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    /// How many entries the log keeps (older ones are dropped).
    pub kept: usize,
}
