//! `GET /chunks/{id}`: one image chunk, zstd-compressed as stored, for restore clients;
//! `GET /chunks?ids=...`: several at once.
//! A chunk's id is its content hash, so a response never changes: it carries the id as
//! ETag and may be cached forever. The client verifies what it gets against the id.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
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
        .map_err(|e: images::Error| ApiError::Invalid(e.to_string()))?;
    let store = state.chunks.clone();
    super::immutable(&headers, id, "application/zstd", move || {
        store.get_compressed(&id).map_err(|e| match e {
            images::Error::MissingChunk { .. } => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct Batch {
    ids: String,
}

/// Most chunks in one batch.
const MAX_BATCH: usize = 64;

/// `GET /chunks?ids=a,b,...`: several chunks in one answer, each framed as a u32
/// (little endian) length and the chunk as stored. Restore clients ask for about 1 MiB
/// of small chunks at a time instead of one request each.
pub async fn batch(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<Batch>,
) -> Result<Response, ApiError> {
    let ids: Vec<ChunkId> = query
        .ids
        .split(',')
        .map(|t| t.parse())
        .collect::<Result<_, images::Error>>()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    if ids.is_empty() || ids.len() > MAX_BATCH {
        return Err(ApiError::Invalid(format!(
            "{} chunk ids: a batch has 1 to {MAX_BATCH}",
            ids.len()
        )));
    }
    let store = state.chunks.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        for id in &ids {
            let bytes = store.get_compressed(id).map_err(|e| match e {
                images::Error::MissingChunk { .. } => ApiError::NotFound(e.to_string()),
                other => ApiError::Internal(other.to_string()),
            })?;
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(&bytes);
            if body.len() as u64 > images::http::MAX_BATCH_BYTES {
                return Err(ApiError::Invalid(format!(
                    "the batch is larger than {} bytes: ask for fewer chunks",
                    images::http::MAX_BATCH_BYTES
                )));
            }
        }
        Ok(body)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}
