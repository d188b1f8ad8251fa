//! `GET /api/v1/stations` and `GET /api/v1/stations/{mac}`: the inventory as JSON.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::clock::rfc3339;
use crate::store::{Event, Station};

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
    let mac = super::parse_mac(&mac)?;
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    name: Option<String>,
    room: Option<String>,
    image: Option<String>,
    kms_activation: Option<bool>,
    disk: Option<String>,
}

fn label(key: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
        return Err(ApiError::Invalid(format!(
            "{key} {value:?}: 1 to 64 characters, no control characters"
        )));
    }
    Ok(())
}

/// `PUT /api/v1/stations/{mac}`: name, room, image, kms_activation, disk; what the body
/// leaves out stays as it is. The KMS flag takes effect at the station's next reset.
pub async fn update(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    payload: Result<Json<SettingsBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let mac = super::parse_mac(&mac)?;
    let body = super::body(payload)?;
    if let Some(name) = &body.name {
        label("name", name)?;
    }
    if let Some(room) = &body.room {
        label("room", room)?;
    }
    if let Some(image) = &body.image {
        images::check_name(image).map_err(|e| ApiError::Invalid(e.to_string()))?;
    }
    if let Some(disk) = &body.disk {
        crate::config::check_disk(disk).map_err(ApiError::Invalid)?;
    }
    let station = super::blocking(&state, move |state| {
        let store = state.policy.store();
        if store.station(mac)?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no station {mac} (stations register at their first PXE boot, or in [[inventory.stations]])"
            )));
        }
        Ok(store.configure(
            mac,
            &crate::store::Settings {
                name: body.name,
                room: body.room,
                image: body.image,
                kms_activation: body.kms_activation,
                disk: body.disk,
            },
        )?)
    })
    .await?;
    Ok(Json(station_json(&station)))
}
