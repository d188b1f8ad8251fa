//! `GET /chunks/{id}`: one image chunk, zstd-compressed as stored, for restore clients.
//! A chunk's id is its content hash, so a response never changes: it carries the id as
//! ETag and may be cached forever. The client verifies what it gets against the id.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
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
    let store = state.chunks.clone();
    super::immutable(&headers, id, "application/zstd", move || {
        store.get_compressed(&id).map_err(|e| match e {
            images::Error::MissingChunk { .. } => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })
    })
    .await
}
