//! `GET /api/v1/stations` and `GET /api/v1/stations/{mac}`: the inventory as JSON.

use axum::extract::{Path, State};
use axum::Json;
use pxe::MacAddr;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::store::{Event, Station};

pub(super) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

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
        "in_use": st.logged_in,
        "last_report": st.last_report.map(rfc3339),
    })
}

fn event_json(e: &Event) -> Value {
    json!({ "kind": e.kind, "at": rfc3339(e.at), "detail": e.detail })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stations = state.policy.store().stations()?;
    Ok(Json(Value::Array(
        stations.iter().map(station_json).collect(),
    )))
}

pub async fn show(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|e: pxe::Error| ApiError::BadRequest(e.to_string()))?;
    let store = state.policy.store();
    let station = store
        .station(mac)?
        .ok_or_else(|| ApiError::NotFound(format!("no station {mac}")))?;
    let mut body = station_json(&station);
    body["reset"] = match store.reset(mac)? {
        Some(r) => super::resets::reset_json(&r),
        None => Value::Null,
    };
    body["events"] = Value::Array(store.events(mac)?.iter().map(event_json).collect());
    Ok(Json(body))
}
