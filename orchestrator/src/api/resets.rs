//! Station resets:
//!
//! - `POST /api/v1/stations/{mac}/reset` `{"image": NAME, "profile": "kms"|"plain"}`
//!   stages the image and marks the station; its next PXE boot chains the restore
//!   environment. `DELETE` on the same path cancels.
//! - `GET /images/{staged_id}/index`: the staged image, for the restore client.
//! - `GET /api/v1/stations/{mac}/station.json` and
//!   `POST /api/v1/stations/{mac}/restore-progress`: the restore client's calls, with
//!   the per-restore token from its kernel command line.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use images::{ChunkId, Profile};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bearer, blocking, body, parse_mac, ApiError, AppState};
use crate::service::resets::{self, ProgressReport};
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

/// `{"image"?, "profile"?}`: by default the station's own image, and the kms
/// profile when the station has KMS activation on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    image: Option<String>,
    profile: Option<String>,
}

pub async fn request(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    payload: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let req = body(payload)?;
    let profile = match &req.profile {
        Some(p) => Some(p.parse::<Profile>().map_err(ApiError::Invalid)?),
        None => None,
    };
    let reset = crate::service::resets::mark(&state, mac, req.image, profile, None).await?;
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
    Path(mac): Path<String>,
    axum::extract::Query(query): axum::extract::Query<CancelQuery>,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    blocking(&state, move |state| resets::cancel(state, mac, query.force)).await?;
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
        images.staged_bytes(&id).map_err(|e| match e {
            images::Error::NoImage(_) => ApiError::NotFound(format!("no staged image {id}")),
            other => ApiError::Internal(other.to_string()),
        })
    })
    .await
}

/// The reset of `mac`, when `headers` carry a valid restore token for it. With
/// `expired_ok`, a genuine token past its expiry is accepted while the reset it was
/// issued for is still under way: a restore of a large disk over a slow link may
/// outlive the token it started with, and must still be able to report.
pub async fn station_json(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    let reset = resets::authorize(&state, mac, bearer(&headers), false)?;
    let restore = state.policy.restore();
    let mut doc = json!({
        "server": restore.server_url,
        "station": mac,
        "token": restore.secret.agent_token(mac, reset.generation),
        "image": reset.staged,
        "base": reset.image,
        "profile": reset.profile,
        "families": reset.families,
    });
    // The agent points the licences it activates at the school's KMS host.
    if let (false, Some(kms)) = (reset.families.is_empty(), &state.staging.kms) {
        doc["kms_host"] = json!(kms.host);
        doc["kms_port"] = json!(kms.port);
    }
    Ok(Json(doc))
}

pub async fn progress(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
    payload: Result<Json<ProgressReport>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    let report = body(payload)?;
    let token = bearer(&headers).map(str::to_owned);
    let reset = blocking(&state, move |state| {
        let token_of = resets::authorize(state, mac, token.as_deref(), true)?;
        resets::progress(state, mac, &token_of, report)
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
