//! `GET /chunks/{id}`: one image chunk, zstd-compressed as stored, for restore clients;
//! `GET /chunks?ids=...`: several at once.
//! A chunk's id is its content hash, so a response never changes: it carries the id as
//! ETag and may be cached forever. The client verifies what it gets against the id.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use images::ChunkId;

use super::{blocking, ApiError, AppState};

pub async fn chunk(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = id
        .parse()
        .map_err(|e: images::Error| ApiError::Invalid(e.to_string()))?;
    let chunks = state.chunks.clone();
    super::immutable(&headers, id, "application/zstd", move || {
        crate::service::chunks::compressed(&chunks, &id)
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct Batch {
    ids: String,
}

/// `GET /chunks?ids=a,b,...`: several chunks in one answer (`service::chunks::batch`).
pub async fn batch(
    State(state): State<AppState>,
    super::extract::QueryOf(query): super::extract::QueryOf<Batch>,
) -> Result<Response, ApiError> {
    let body = blocking(&state, move |s| {
        crate::service::chunks::batch(s, &query.ids)
    })
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

fn index_id(id: &str) -> Result<ChunkId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::Invalid(format!("{id:?} is not an index id (64 hex digits)")))
}

/// `GET /indexes/{id}`: an image index's summary, named by its hash (immutable).
pub async fn summary(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = index_id(&id)?;
    let images = state.images.clone();
    super::immutable(&headers, id, "application/octet-stream", move || {
        crate::service::chunks::summary(&images, &id)
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct Groups {
    first: u64,
    count: u64,
}

/// `GET /indexes/{id}/groups?first=K&count=N`: the ids of those groups (immutable:
/// the index id fixes them).
pub async fn groups(
    State(state): State<AppState>,
    Path(id): Path<String>,
    super::extract::QueryOf(query): super::extract::QueryOf<Groups>,
) -> Result<Response, ApiError> {
    let id = index_id(&id)?;
    let body = blocking(&state, move |s| {
        crate::service::chunks::group_ids(&s.images, &id, query.first, query.count)
    })
    .await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream"),
            (
                axum::http::header::CACHE_CONTROL,
                "public, max-age=31536000, immutable",
            ),
        ],
        body,
    )
        .into_response())
}
