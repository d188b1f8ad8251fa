//! KMS campaigns: `POST /api/v1/campaigns` `{room | stations, families, margin?,
//! start, image?}` -> 201 `{id}`; `GET /api/v1/campaigns[/{id}]`; `DELETE
//! /api/v1/campaigns/{id}` (cancel: no new cycles).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pxe::MacAddr;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::campaigns::Record;
use crate::engine::campaign::{Campaign, Phase, State as CampaignState};
use crate::engine::{planner, Family};

/// Margins beyond this would only waste cycles.
const MAX_MARGIN: u32 = 10;
/// The most Office CMIDs a KMS host keeps (twice its threshold).
const OFFICE_TABLE: u32 = 10;
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// A station whose agent reported or polled this recently is taken as running: it is
/// rebooted through its agent rather than woken.
const AGENT_FRESH_MS: u64 = 10 * 60 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub room: Option<String>,
    pub stations: Option<Vec<String>>,
    pub families: Vec<Family>,
    pub margin: Option<u32>,
    pub start: String,
    pub image: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    payload: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        payload.map_err(|e| ApiError::BadRequest(format!("request body: {}", e.body_text())))?;
    let id = start_campaign(&state, body, None).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

/// Check a campaign request, save the campaign and hand it to the runner. A top-up
/// passes its `horizon`: its counts are the ledger's projection for then.
pub async fn start_campaign(
    state: &AppState,
    body: CreateBody,
    horizon: Option<u64>,
) -> Result<u64, ApiError> {
    let window = match body.start.as_str() {
        "now" => false,
        "window" if state.schedule.is_none() => {
            return Err(ApiError::Conflict(
                "start \"window\": no overnight windows are configured ([[schedule.windows]])"
                    .into(),
            ))
        }
        "window" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "start {other:?}: expected \"now\" or \"window\""
            )))
        }
    };
    let margin = body.margin.unwrap_or(2);
    if margin > MAX_MARGIN {
        return Err(ApiError::BadRequest(format!(
            "margin {margin}: expected 0 to {MAX_MARGIN}"
        )));
    }
    // The KMS host's Office table holds 10 CMIDs (KMS.md): a higher target is never
    // reached.
    if body.families.contains(&Family::Office) && Family::Office.threshold() + margin > OFFICE_TABLE
    {
        return Err(ApiError::BadRequest(format!(
            "margin {margin}: the KMS host counts at most {OFFICE_TABLE} Office activations, so with office the margin is at most {}",
            OFFICE_TABLE - Family::Office.threshold()
        )));
    }
    // One creation at a time: the check that no station is in two campaigns and the
    // save must not interleave.
    let _creating = CREATING.lock().await;
    let mut families = body.families.clone();
    families.sort();
    families.dedup();
    if families.is_empty() {
        return Err(ApiError::BadRequest(
            "families: name windows and/or office".into(),
        ));
    }
    let Some(kms) = &state.staging.kms else {
        return Err(ApiError::Conflict(
            "campaigns need the KMS host: add [kms] host = \"...\" to the configuration".into(),
        ));
    };
    let configured = kms.families();
    if let Some(f) = families
        .iter()
        .find(|f| !configured.contains(&f.name().to_owned()))
    {
        return Err(ApiError::Conflict(format!(
            "{f} is not in [kms] families ({})",
            configured.join(", ")
        )));
    }
    let store = state.policy.store();
    let all = store.stations()?;
    let selected: Vec<&crate::store::Station> = match (&body.room, &body.stations) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::BadRequest("name either room or stations".into()))
        }
        (Some(room), None) => {
            let in_room: Vec<_> = all
                .iter()
                .filter(|s| s.room.as_deref() == Some(room) && s.kms_activation)
                .collect();
            if in_room.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "room {room:?} has no station with KMS activation on (PUT /api/v1/stations/{{mac}} with \"kms_activation\": true)"
                )));
            }
            in_room
        }
        (None, Some(macs)) => {
            let mut out = Vec::new();
            for text in macs {
                let mac: MacAddr = text
                    .parse()
                    .map_err(|e: pxe::Error| ApiError::BadRequest(e.to_string()))?;
                let st = all
                    .iter()
                    .find(|s| s.mac == mac)
                    .ok_or_else(|| ApiError::NotFound(format!("no station {mac}")))?;
                if !out.iter().any(|s: &&crate::store::Station| s.mac == mac) {
                    out.push(st);
                }
            }
            if out.is_empty() {
                return Err(ApiError::BadRequest("stations: name at least one".into()));
            }
            out
        }
    };
    // The guard: Microsoft counts computers.
    for f in &families {
        planner::guard(*f, all.len()).map_err(ApiError::Conflict)?;
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
                    return Err(ApiError::BadRequest(
                        "image: the stations do not share one image; name it".into(),
                    ))
                }
            }
        }
    };
    images::check_name(&image).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if state.images.get(&image).is_err() {
        return Err(ApiError::NotFound(format!(
            "no image named {image:?} (netreset image ls)"
        )));
    }
    for r in store.campaigns()? {
        if r.campaign.state == CampaignState::Running {
            if let Some(s) = selected
                .iter()
                .find(|s| r.campaign.stations.iter().any(|x| x.mac == s.mac))
            {
                return Err(ApiError::Conflict(format!(
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

fn record_json(r: &Record) -> Value {
    let c = &r.campaign;
    let in_flight = |f: Family| {
        c.stations
            .iter()
            .filter(|s| s.families.contains(&f) && !matches!(s.phase, Phase::Idle))
            .count() as u32
    };
    let families: serde_json::Map<String, Value> = c
        .targets
        .iter()
        .map(|(f, target)| {
            let reported = c.reported.get(f).copied().unwrap_or(0);
            let planned = target.saturating_sub(reported + in_flight(*f));
            (
                f.name().to_owned(),
                json!({ "reported": reported, "target": target, "in_flight": in_flight(*f), "planned": planned }),
            )
        })
        .collect();
    let stations: Vec<Value> = c
        .stations
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s.phase).expect("phase");
            v["mac"] = json!(s.mac);
            v["cycles_done"] = json!(s.cycles_done);
            v["families"] = json!(s.families);
            v
        })
        .collect();
    let mut state = serde_json::to_value(&c.state).expect("state");
    state["id"] = json!(r.id);
    state["image"] = json!(c.image);
    state["margin"] = json!(r.margin);
    state["families"] = Value::Object(families);
    state["cycles_done"] = json!(c.stations.iter().map(|s| s.cycles_done).sum::<u32>());
    state["cycles_started"] = json!(c.cycles_started);
    state["start"] = json!(if r.window { "window" } else { "now" });
    state["waiting_for_window"] = json!(c.paused);
    state["top_up_until"] = json!(r.horizon.map(|h| super::stations::rfc3339(h * 1000)));
    state["stations"] = Value::Array(stations);
    state["created_at"] = json!(super::stations::rfc3339(r.created_at));
    state["updated_at"] = json!(super::stations::rfc3339(r.updated_at));
    state
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = state.policy.store().campaigns()?;
    Ok(Json(Value::Array(all.iter().map(record_json).collect())))
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a campaign id")))
}

/// The campaign `id` of the path.
fn load(state: &AppState, id: &str) -> Result<Record, ApiError> {
    let id = parse_id(id)?;
    state
        .policy
        .store()
        .campaign(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no campaign {id}")))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(record_json(&load(&state, &id)?)))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = load(&state, &id)?;
    let id = record.id;
    if record.campaign.state != CampaignState::Running {
        return Err(ApiError::Conflict(format!("campaign {id} is not running")));
    }
    state.campaigns.cancel(id);
    Ok(Json(json!({ "id": id, "cancelling": true })))
}
