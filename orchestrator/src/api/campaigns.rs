//! KMS campaigns: `POST /api/v1/campaigns` `{room | stations, families, margin?,
//! start, image?}` -> 201 `{id}`; `GET /api/v1/campaigns[/{id}]`; `DELETE
//! /api/v1/campaigns/{id}` (cancel: no new cycles).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::engine::campaign::{Phase, Record, State as CampaignState};
use crate::engine::Family;
use crate::service::campaigns::CreateBody;

pub async fn create(
    State(state): State<AppState>,
    payload: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(payload)?;
    let id = crate::service::campaigns::start(&state, body, None).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
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
    state["top_up_until"] = json!(r.horizon.map(|h| crate::clock::rfc3339(h * 1000)));
    state["stations"] = Value::Array(stations);
    state["created_at"] = json!(crate::clock::rfc3339(r.created_at));
    state["updated_at"] = json!(crate::clock::rfc3339(r.updated_at));
    state
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = state.policy.store().campaigns()?;
    Ok(Json(Value::Array(all.iter().map(record_json).collect())))
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::Invalid(format!("{text:?} is not a campaign id")))
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
