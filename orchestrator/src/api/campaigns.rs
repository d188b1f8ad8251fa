//! KMS campaigns: `POST /api/v1/campaigns` `{room | stations, families, margin?,
//! start, image?}` -> 201 `{id}`; `GET /api/v1/campaigns[/{id}]`; `DELETE
//! /api/v1/campaigns/{id}` (cancel: no new cycles).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::extract::Body;
use super::{blocking, ApiError, AppState};
use crate::engine::campaign::{Phase, Record};
use crate::engine::Family;
use crate::service::campaigns::{self, CreateBody};

pub async fn create(
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<Response, ApiError> {
    let id = blocking(&state, move |s| campaigns::start(s, body, None)).await?;
    let mut answer = (StatusCode::CREATED, Json(json!({ "id": id }))).into_response();
    answer
        .extensions_mut()
        .insert(super::audit::Target(id.to_string()));
    Ok(answer)
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
    let all = blocking(&state, campaigns::list).await?;
    Ok(Json(all.iter().map(record_json).collect()))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = blocking(&state, move |s| campaigns::get(s, &id)).await?;
    Ok(Json(record_json(&record)))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = blocking(&state, move |s| campaigns::cancel(s, &id)).await?;
    Ok(Json(json!({ "id": id, "cancelling": true })))
}
