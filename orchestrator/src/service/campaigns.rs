//! Campaigns: create one (checked, saved, handed to the runner), the runner's
//! mailbox, and what the keep-alive would start.

use pxe::MacAddr;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Error, Services};
use crate::engine::campaign::{Campaign, Event, Record, State as CampaignState};
use crate::engine::{planner, Family};

/// Margins beyond this would only waste cycles.
const MAX_MARGIN: u32 = 10;
/// The most Office CMIDs a KMS host keeps (twice its threshold).
const OFFICE_TABLE: u32 = 10;
/// A station whose agent reported or polled this recently is taken as running: it is
/// rebooted through its agent rather than woken.
const AGENT_FRESH_MS: u64 = 10 * 60 * 1000;

/// A campaign request, as the API takes it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub room: Option<String>,
    pub stations: Option<Vec<String>>,
    #[schema(value_type = Vec<super::views::FamilyName>)]
    pub families: Vec<Family>,
    pub margin: Option<u32>,
    /// `now`, or `window`: its cycles run in the overnight windows only.
    pub start: String,
    pub image: Option<String>,
}

/// What reaches the runner.
#[derive(Debug)]
pub enum Msg {
    Station(MacAddr, Event),
    Started(u64),
    Cancel(u64),
}

/// The runner's mailbox, shared by the API handlers.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    /// Held while a campaign is created: the check that no station is in two
    /// campaigns and the save must not interleave.
    creating: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Handle {
    pub fn new() -> (Handle, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let creating = Default::default();
        (Handle { tx, creating }, rx)
    }

    /// Tell the runner what a station did (ignored when it is in no campaign).
    pub fn station(&self, mac: MacAddr, event: Event) {
        let _ = self.tx.send(Msg::Station(mac, event));
    }

    pub fn started(&self, id: u64) {
        let _ = self.tx.send(Msg::Started(id));
    }

    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Msg::Cancel(id));
    }
}

/// Check a campaign request, save the campaign and hand it to the runner. A top-up
/// passes its `horizon`: its counts are the ledger's projection for then.
pub fn start(state: &Services, body: CreateBody, horizon: Option<u64>) -> Result<u64, Error> {
    let window = match body.start.as_str() {
        "now" => false,
        "window" if state.schedule.is_none() => {
            return Err(Error::Conflict(
                "start \"window\": no overnight windows are configured ([[schedule.windows]])"
                    .into(),
            ))
        }
        "window" => true,
        other => {
            return Err(Error::Invalid(format!(
                "start {other:?}: expected \"now\" or \"window\""
            )))
        }
    };
    let margin = body.margin.unwrap_or(2);
    if margin > MAX_MARGIN {
        return Err(Error::Invalid(format!(
            "margin {margin}: expected 0 to {MAX_MARGIN}"
        )));
    }
    // The KMS host's Office table holds 10 CMIDs (docs/kms.md): a higher target is never
    // reached.
    if body.families.contains(&Family::Office) && Family::Office.threshold() + margin > OFFICE_TABLE
    {
        return Err(Error::Invalid(format!(
            "margin {margin}: the KMS host counts at most {OFFICE_TABLE} Office activations, so with office the margin is at most {}",
            OFFICE_TABLE - Family::Office.threshold()
        )));
    }
    // One creation at a time (a poisoned lock guards nothing half done: the save is
    // the last step).
    let _creating = state
        .campaigns
        .creating
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut families = body.families.clone();
    families.sort();
    families.dedup();
    if families.is_empty() {
        return Err(Error::Invalid(
            "families: name windows and/or office".into(),
        ));
    }
    let Some(kms) = &state.staging.kms else {
        return Err(Error::Conflict(
            "campaigns need the KMS host: add [kms] host = \"...\" to the configuration".into(),
        ));
    };
    let configured = kms.families();
    if let Some(f) = families
        .iter()
        .find(|f| !configured.contains(&f.name().to_owned()))
    {
        return Err(Error::Conflict(format!(
            "{f} is not in [kms] families ({})",
            configured.join(", ")
        )));
    }
    let store = state.policy.store();
    let all = store.stations()?;
    let selected: Vec<&crate::store::Station> = match (&body.room, &body.stations) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(Error::Invalid("name either room or stations".into()))
        }
        (Some(room), None) => {
            let in_room: Vec<_> = all
                .iter()
                .filter(|s| s.room.as_deref() == Some(room) && s.kms_activation)
                .collect();
            if in_room.is_empty() {
                return Err(Error::Invalid(format!(
                    "room {room:?} has no station with KMS activation on (PUT /api/v1/stations/{{mac}} with \"kms_activation\": true)"
                )));
            }
            in_room
        }
        (None, Some(macs)) => {
            let mut out = Vec::new();
            for text in macs {
                let mac = super::parse_mac(text)?;
                let st = all
                    .iter()
                    .find(|s| s.mac == mac)
                    .ok_or_else(|| Error::NotFound(format!("no station {mac}")))?;
                if !out.iter().any(|s: &&crate::store::Station| s.mac == mac) {
                    out.push(st);
                }
            }
            if out.is_empty() {
                return Err(Error::Invalid("stations: name at least one".into()));
            }
            out
        }
    };
    // The guard: Microsoft counts computers, and only stations the admin confirmed
    // are known to be computers of the school (one that registered by itself from
    // DHCP could be a laptop).
    let confirmed = all.iter().filter(|s| s.confirmed).count();
    for f in &families {
        planner::guard(*f, confirmed)?;
    }
    let image = match &body.image {
        Some(i) => i.clone(),
        None => {
            let mut names: Vec<&str> = selected.iter().filter_map(|s| s.image.as_deref()).collect();
            names.sort_unstable();
            names.dedup();
            match (names.as_slice(), selected.iter().all(|s| s.image.is_some())) {
                ([one], true) => (*one).to_owned(),
                _ => {
                    return Err(Error::Invalid(
                        "image: the stations do not share one image; name it".into(),
                    ))
                }
            }
        }
    };
    images::check_name(&image).map_err(|e| Error::Invalid(e.to_string()))?;
    if state.images.get(&image).is_err() {
        return Err(Error::NotFound(format!(
            "no image named {image:?} (netreset image ls)"
        )));
    }
    for r in store.campaigns()? {
        if r.campaign.state == CampaignState::Running {
            if let Some(s) = selected
                .iter()
                .find(|s| r.campaign.stations.iter().any(|x| x.mac == s.mac))
            {
                return Err(Error::Conflict(format!(
                    "{} is in campaign {} already",
                    s.mac, r.id
                )));
            }
        }
    }
    let now = state.policy.store().clock().now_ms();
    let stations: Vec<(MacAddr, bool)> = selected
        .iter()
        .map(|s| {
            (
                s.mac,
                s.last_report
                    .max(s.last_poll)
                    .is_some_and(|t| now.saturating_sub(t) < AGENT_FRESH_MS),
            )
        })
        .collect();
    let settings = &state.campaign_settings;
    // Start from the counts stations reported in the last 30 days (older ones have
    // aged out of the host's count), so a top-up does not start blind from zero.
    let ledger = store.ledger()?;
    let known: Vec<(Family, u32)> = match horizon {
        Some(h) => families
            .iter()
            .map(|f| (*f, ledger.projected(*f, h)))
            .collect(),
        None => families
            .iter()
            .filter_map(|f| {
                let r = ledger.latest(*f)?;
                (now / 1000 < r.last_request() + crate::engine::ledger::CMID_LIFETIME_S)
                    .then_some((*f, r.count))
            })
            .collect(),
    };
    // A count older than a week may be far off what the host counts now (clients
    // netreset never sees come and go): one cycle first learns it.
    let probing: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| {
            ledger.latest(*f).is_none_or(|r| {
                now / 1000 >= r.last_request() + crate::engine::ledger::PROBE_AFTER_S
            })
        })
        .collect();

    let id = store.next_id()?;
    let record = Record {
        id,
        created_at: now,
        updated_at: now,
        families: families.clone(),
        margin,
        window,
        horizon,
        campaign: {
            let mut c = Campaign::new(
                &image,
                &families,
                margin,
                &stations,
                settings.max_parallel,
                settings.limits.clone(),
            );
            c.reported.extend(known);
            c.probing = probing;
            c.paused = window
                && !state
                    .schedule
                    .as_ref()
                    .as_ref()
                    .is_some_and(|w| w.contains((now / 1000) as i64));
            c
        },
    };
    store.put_campaign(id, &record)?;
    state.campaigns.started(id);
    tracing::info!(
        id,
        stations = stations.len(),
        ?families,
        margin,
        window,
        "campaign created"
    );
    Ok(id)
}

pub fn list(state: &Services) -> Result<Vec<Record>, Error> {
    Ok(state.policy.store().campaigns()?)
}

/// The campaign `id` (as the request gave it).
pub fn get(state: &Services, id: &str) -> Result<Record, Error> {
    let id: u64 = id
        .parse()
        .map_err(|_| Error::Invalid(format!("{id:?} is not a campaign id")))?;
    state
        .policy
        .store()
        .campaign(id)?
        .ok_or_else(|| Error::NotFound(format!("no campaign {id}")))
}

/// Ask the runner to cancel campaign `id`: no new cycles start, the ones under way
/// are let finish or withdrawn.
pub fn cancel(state: &Services, id: &str) -> Result<u64, Error> {
    let record = get(state, id)?;
    if record.campaign.state != CampaignState::Running {
        return Err(Error::Conflict(format!(
            "campaign {} is not running",
            record.id
        )));
    }
    state.campaigns.cancel(record.id);
    Ok(record.id)
}

/// The families keep-alive looks after: those `[kms] families` activates.
pub fn kept_families(state: &Services) -> Vec<Family> {
    let Some(kms) = &state.staging.kms else {
        return Vec::new();
    };
    [Family::Windows, Family::Office]
        .into_iter()
        .filter(|f| kms.families().contains(&f.name().to_owned()))
        .collect()
}

/// The top-up keep-alive calls for at `now`, if any (see `engine::keepalive`).
pub fn top_up_plan(
    state: &Services,
    now: u64,
) -> Result<Option<crate::engine::keepalive::TopUp>, Error> {
    let Some(schedule) = state.schedule.as_ref().as_ref() else {
        return Ok(None);
    };
    let ledger = state.policy.store().ledger()?;
    Ok(crate::engine::keepalive::plan(
        &ledger,
        schedule,
        &kept_families(state),
        now,
    ))
}
