//! Station resets:
//!
//! - `POST /api/v1/stations/{mac}/reset` `{"image": NAME, "profile": "kms"|"plain"}`
//!   stages the image and marks the station; its next PXE boot chains the restore
//!   environment. `DELETE` on the same path cancels.
//! - `GET /images/{staged_id}/index`: the staged image, for the restore client.
//! - `GET /api/v1/stations/{mac}/station.json` and
//!   `POST /api/v1/stations/{mac}/restore-progress`: the restore client's calls, with
//!   the per-restore token from its kernel command line.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use images::ChunkId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Bearer, Body, Mac, Peer};
use super::{blocking, ApiError, AppState};
use crate::service::resets::{self, ProgressReport, ResetRequest};
use crate::store::Reset;

/// The reset as the API shows it.
pub fn reset_json(r: &Reset) -> Value {
    let percent = if r.total_bytes > 0 {
        (r.done_bytes as f64 * 1000.0 / r.total_bytes as f64).round() / 10.0
    } else {
        0.0
    };
    json!({
        "image": r.image,
        "profile": r.profile,
        "staged": r.staged,
        "disk": r.disk,
        "state": r.state,
        "percent": percent,
        "done_bytes": r.done_bytes,
        "total_bytes": r.total_bytes,
        "stats": r.stats,
        "error": r.error,
        "requested_at": crate::clock::rfc3339(r.requested_at),
        "updated_at": crate::clock::rfc3339(r.updated_at),
    })
}

pub async fn request(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(req): Body<ResetRequest>,
) -> Result<Response, ApiError> {
    let reset = blocking(&state, move |s| resets::request(s, mac, req)).await?;
    let mut answer = reset_json(&reset);
    answer["station"] = json!(mac);
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[derive(Deserialize)]
pub struct CancelQuery {
    #[serde(default)]
    force: bool,
}

pub async fn cancel(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Query(query): Query<CancelQuery>,
) -> Result<Json<Value>, ApiError> {
    blocking(&state, move |s| resets::cancel(s, mac, query.force)).await?;
    Ok(Json(json!({ "station": mac, "cancelled": true })))
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

pub async fn progress(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    Body(report): Body<ProgressReport>,
) -> Result<Json<Value>, ApiError> {
    let reset = blocking(&state, move |s| {
        resets::progress(s, mac, token.as_deref(), from, report)
    })
    .await?;
    Ok(Json(reset_json(&reset)))
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
