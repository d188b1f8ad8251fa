//! Captures of a station's disk into a new image:
//!
//! - `POST /api/v1/stations/{mac}/capture` `{"name": NAME, "chunk_size"?}` (admin):
//!   the station's next PXE boot captures its disk; `DELETE` cancels.
//! - The restore environment's calls in capture mode, with the capture token from
//!   its kernel command line, each checked (token, then the address the capture runs
//!   from) before its body is read: `.../capture/progress` (JSON; the first binds the
//!   address and answers the chunk size), `.../capture/missing` (ids → one byte each),
//!   `.../capture/chunks` (framed zstd chunks, each verified against its id),
//!   `.../capture/index` (the index: the image is made, the capture done).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Bearer, Body, Mac, Peer};
use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::captures::{self, CaptureReport, CaptureRequest};
use crate::service::views::CaptureView;
use crate::store::Capture;
use axum::extract::State;

/// A capture cancelled.
#[derive(Serialize, ToSchema)]
pub struct CaptureCancelled {
    pub station: String,
    pub cancelled: bool,
}

/// Capture a station's disk into a new image: its next PXE boot reads the disk in
/// the restore environment and uploads what the store lacks.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/capture",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = CaptureRequest,
    security(("admin" = [])),
    responses((status = 202, body = CaptureView), Errors)
)]
pub async fn request(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(req): Body<CaptureRequest>,
) -> Result<Response, ApiError> {
    let capture = blocking(&state, move |s| captures::request(s, mac, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(CaptureView::of(mac, &capture))).into_response())
}

/// Cancel a station's capture (the chunks it uploaded stay until `image gc`).
#[utoipa::path(
    delete,
    path = "/api/v1/stations/{mac}/capture",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    security(("admin" = [])),
    responses((status = 200, body = CaptureCancelled), Errors)
)]
pub async fn cancel(
    State(state): State<AppState>,
    Mac(mac): Mac,
) -> Result<Json<CaptureCancelled>, ApiError> {
    blocking(&state, move |s| captures::cancel(s, mac)).await?;
    Ok(Json(CaptureCancelled {
        station: mac.to_string(),
        cancelled: true,
    }))
}

/// The capture client's progress, or its failure (its index ends a capture).
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/capture/progress",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = CaptureReport,
    security(("restore" = [])),
    responses((status = 200, body = CaptureView), Errors)
)]
pub async fn progress(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    Body(report): Body<CaptureReport>,
) -> Result<Json<CaptureView>, ApiError> {
    let capture = blocking(&state, move |s| {
        captures::progress(s, mac, token.as_deref(), from, report)
    })
    .await?;
    Ok(Json(CaptureView::new(&capture)))
}

/// Which chunks the store lacks: the body is ids, 32 bytes each (1 to 4,096); the
/// answer one byte each, 1 for missing.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/capture/missing",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    security(("restore" = [])),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), Errors)
)]
pub async fn missing(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let _ = authorized(&state, mac, token, from).await?;
    let body = read(body, captures::MAX_ASKED * 32).await?;
    let answer = blocking(&state, move |s| captures::missing(s, &body)).await?;
    Ok(octets(answer))
}

/// Upload chunks: frames of the 32-byte id, a u32 (little endian) length and the
/// zstd-compressed chunk; each is checked against its id, and a batch with a bad
/// one stores nothing.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/capture/chunks",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    security(("restore" = [])),
    responses((status = 200, description = "How many chunks were new", body = Object), Errors)
)]
pub async fn chunks(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let capture = authorized(&state, mac, token, from).await?;
    let body = read(body, captures::MAX_UPLOAD_BYTES).await?;
    let new = blocking(&state, move |s| captures::upload(s, &capture, &body)).await?;
    Ok(Json(serde_json::json!({ "new": new })))
}

/// The capture's index: checked and made the image; the capture is done.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/capture/index",
    tag = "restore",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    security(("restore" = [])),
    responses((status = 200, body = CaptureView), Errors)
)]
pub async fn index(
    State(state): State<AppState>,
    Peer(from): Peer,
    Mac(mac): Mac,
    Bearer(token): Bearer,
    body: axum::body::Body,
) -> Result<Json<CaptureView>, ApiError> {
    let capture = authorized(&state, mac, token, from).await?;
    let body = read(body, captures::MAX_INDEX_BYTES).await?;
    let done = blocking(&state, move |s| captures::finish(s, mac, &capture, &body)).await?;
    Ok(Json(CaptureView::new(&done)))
}

/// The capture a call is for, checked before its body is read.
async fn authorized(
    state: &AppState,
    mac: pxe::MacAddr,
    token: Option<String>,
    from: Option<std::net::Ipv4Addr>,
) -> Result<Capture, ApiError> {
    blocking(state, move |s| {
        captures::authorize(s, mac, token.as_deref(), from)
    })
    .await
}

/// The whole body, refused past `limit` bytes without reading further.
async fn read(body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        ApiError::Invalid(format!(
            "request body: {e} (at most {limit} bytes; a shorter batch)"
        ))
    })
}

fn octets(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}
