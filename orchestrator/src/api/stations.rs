//! `GET /api/v1/stations`, `GET|PUT /api/v1/stations/{mac}`: the inventory.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::extract::{Body, Mac};
use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::stations;
use crate::service::views::{StationDetail, StationView};
use crate::store::Settings;

/// Every station the boot server knows, with the state it shows. Its ETag changes
/// with every change of the store: `If-None-Match` gets a 304 while nothing changed.
#[utoipa::path(
    get,
    path = "/api/v1/stations",
    tag = "stations",
    security(("admin" = [])),
    responses(
        (status = 200, body = Vec<StationView>),
        (status = 304, description = "Nothing changed since the ETag given in If-None-Match"),
        Errors
    )
)]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (version, json) = blocking(&state, stations::list_json).await?;
    let etag = format!("\"stations-{version}\"");
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        axum::body::Bytes::from_owner(json),
    )
        .into_response())
}

/// One station with its reset and its recent events (its boot path and restore
/// history).
#[utoipa::path(
    get,
    path = "/api/v1/stations/{mac}",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    security(("admin" = [])),
    responses((status = 200, body = StationDetail), Errors)
)]
pub async fn show(
    State(state): State<AppState>,
    Mac(mac): Mac,
) -> Result<Json<StationDetail>, ApiError> {
    Ok(Json(
        blocking(&state, move |s| stations::show(s, mac)).await?,
    ))
}

/// Change a station's name, room, image, KMS activation or disk; what the body
/// leaves out stays as it is.
#[utoipa::path(
    put,
    path = "/api/v1/stations/{mac}",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = Settings,
    security(("admin" = [])),
    responses((status = 200, body = StationView), Errors)
)]
pub async fn update(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(settings): Body<Settings>,
) -> Result<Json<StationView>, ApiError> {
    let station = blocking(&state, move |s| stations::configure(s, mac, &settings)).await?;
    Ok(Json(station))
}
