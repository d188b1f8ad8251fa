//! `GET /chunks/{id}`: one image chunk, zstd-compressed as stored, for restore clients.
//! A chunk's id is its content hash, so a response never changes: it carries the id as
//! ETag and may be cached forever. The client verifies what it gets against the id.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use images::ChunkId;

use super::{ApiError, AppState};

pub async fn chunk(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = id
        .parse()
        .map_err(|e: images::Error| ApiError::BadRequest(e.to_string()))?;
    let etag = format!("\"{id}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let store = state.chunks.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get_compressed(&id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| match e {
            images::Error::MissingChunk { .. } => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zstd".to_owned()),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
        ],
        bytes,
    )
        .into_response())
}
