//! Station resets:
//!
//! - `POST /api/v1/stations/{mac}/reset` `{"image": NAME, "profile": "kms"|"plain"}`
//!   stages the image and marks the station; its next PXE boot chains the restore
//!   environment. `DELETE` on the same path cancels.
//! - `GET /images/{staged_id}/index`: the staged image, for the restore client.
//! - `GET /api/v1/stations/{mac}/station.json` and
//!   `POST /api/v1/stations/{mac}/restore-progress`: the restore client's calls, with
//!   the per-restore token from its kernel command line.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use images::ChunkId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Bearer, Body, Mac, Peer, QueryOf};
use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::resets::{self, PeersRequest, ProgressReport, ResetRequest};
use crate::service::views::{ResetView, WaveView};

/// A reset cancelled.
#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub station: String,
    pub cancelled: bool,
}

/// Reset a station: stage the image and mark it; its next PXE boot restores.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/reset",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = ResetRequest,
    security(("admin" = [])),
    responses((status = 202, body = ResetView), Errors)
)]
pub async fn request(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(req): Body<ResetRequest>,
) -> Result<Response, ApiError> {
    let reset = blocking(&state, move |s| resets::request(s, mac, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(ResetView::of(mac, &reset))).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelQuery {
    /// Cancel also a restore under way (the station's next boot is its local disk).
    #[serde(default)]
    force: bool,
}

/// Cancel a station's reset.
#[utoipa::path(
    delete,
    path = "/api/v1/stations/{mac}/reset",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56"), CancelQuery),
    security(("admin" = [])),
    responses((status = 200, body = Cancelled), Errors)
)]
pub async fn cancel(
    State(state): State<AppState>,
    Mac(mac): Mac,
    QueryOf(query): QueryOf<CancelQuery>,
) -> Result<Json<Cancelled>, ApiError> {
    blocking(&state, move |s| resets::cancel(s, mac, query.force)).await?;
    Ok(Json(Cancelled {
        station: mac.to_string(),
        cancelled: true,
    }))
}

pub async fn staged_index(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = id.parse().map_err(|_| {
        ApiError::Invalid(format!("{id:?} is not a staged image id (64 hex digits)"))
    })?;
    let images = state.images.clone();
    super::immutable(&headers, id, "application/octet-stream", move || {
        resets::staged(&images, &id)
    })
    .await
}

/// The restore client's instructions: the staged image, the disk, the tokens.
#[utoipa::path(
    get,
    path = "/api/v1/stations/{mac}/station.json",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    security(("restore" = [])),
    responses((status = 200, description = "The restore client's station.json", body = Object), Errors)
)]
pub async fn station_json(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
) -> Result<Json<Value>, ApiError> {
    let doc = blocking(&state, move |s| {
        resets::station_json(s, mac, token.as_deref(), from)
    })
    .await?;
    Ok(Json(doc))
}

/// The restore client's progress (and its end: done or failed).
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/restore-progress",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = ProgressReport,
    security(("restore" = [])),
    responses((status = 200, body = ResetView), Errors)
)]
pub async fn progress(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    Body(report): Body<ProgressReport>,
) -> Result<Json<ResetView>, ApiError> {
    let reset = blocking(&state, move |s| {
        resets::progress(s, mac, token.as_deref(), from, report)
    })
    .await?;
    Ok(Json(ResetView::new(&reset)))
}

/// A restore environment asks for its wave: the token its members share and the
/// members serving chunks now.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/peers",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = PeersRequest,
    security(("restore" = [])),
    responses((status = 200, body = WaveView), Errors)
)]
pub async fn peers(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    Body(req): Body<PeersRequest>,
) -> Result<Json<WaveView>, ApiError> {
    let wave = blocking(&state, move |s| {
        resets::peers(s, mac, token.as_deref(), from, req)
    })
    .await?;
    Ok(Json(wave))
}

pub async fn restore_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let path = pxe::tftp::resolve(&state.restore.dir, &file)
        .map_err(|why| ApiError::NotFound(format!("{file:?}: {why}")))?;
    let handle = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{file:?}: {e}")))?;
    let len = handle
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}
