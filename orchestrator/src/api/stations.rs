//! `GET /api/v1/stations` and `GET /api/v1/stations/{mac}`: the inventory as JSON.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::extract::{Body, Mac};
use super::{blocking, ApiError, AppState};
use crate::clock::rfc3339;
use crate::service::stations;
use crate::store::{Event, Settings, Station};

fn station_json(st: &Station) -> Value {
    json!({
        "mac": st.mac,
        "name": st.name,
        "room": st.room,
        "arch": st.arch,
        "firmware": st.firmware,
        "uuid": st.uuid,
        "ip": st.ip,
        "first_seen": st.first_seen.map(rfc3339),
        "last_seen": st.last_seen.map(rfc3339),
        "image": st.image,
        "kms_activation": st.kms_activation,
        "disk": st.disk,
        "in_use": st.logged_in,
        "confirmed": st.confirmed,
        "last_report": st.last_report.map(rfc3339),
    })
}

fn event_json(e: &Event) -> Value {
    json!({ "kind": e.kind, "at": rfc3339(e.at), "detail": e.detail })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stations = blocking(&state, stations::list).await?;
    Ok(Json(stations.iter().map(station_json).collect()))
}

pub async fn show(State(state): State<AppState>, Mac(mac): Mac) -> Result<Json<Value>, ApiError> {
    let detail = blocking(&state, move |s| stations::show(s, mac)).await?;
    let mut body = station_json(&detail.station);
    body["reset"] = detail
        .reset
        .as_ref()
        .map_or(Value::Null, super::resets::reset_json);
    body["events"] = detail.events.iter().map(event_json).collect();
    Ok(Json(body))
}

/// `PUT /api/v1/stations/{mac}`: name, room, image, kms_activation, disk; what the body
/// leaves out stays as it is.
pub async fn update(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(settings): Body<Settings>,
) -> Result<Json<Value>, ApiError> {
    let station = blocking(&state, move |s| stations::configure(s, mac, &settings)).await?;
    Ok(Json(station_json(&station)))
}
