//! Image chunks for restore clients, as stored (zstd): one by id, or a batch framed
//! as a u32 (little endian) length and the chunk, so that a client asks for about
//! 1 MiB of small chunks at a time instead of one request each.

use images::{ChunkId, ChunkStore};

use super::{Error, Services};

/// Most chunks in one batch.
const MAX_BATCH: usize = 64;

/// Chunk `id` as stored; a chunk the store lacks is [`Error::NotFound`].
pub fn compressed(chunks: &ChunkStore, id: &ChunkId) -> Result<Vec<u8>, Error> {
    chunks.get_compressed(id).map_err(|e| match e {
        images::Error::MissingChunk { .. } => Error::NotFound(e.to_string()),
        other => Error::Internal(other.to_string()),
    })
}

/// The chunks `ids` (comma-separated) framed in order, 1 to 64 of them and at most
/// `images::http::MAX_BATCH_BYTES` in all.
pub fn batch(state: &Services, ids: &str) -> Result<Vec<u8>, Error> {
    let ids: Vec<ChunkId> = ids
        .split(',')
        .map(str::parse)
        .collect::<Result<_, images::Error>>()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if ids.is_empty() || ids.len() > MAX_BATCH {
        return Err(Error::Invalid(format!(
            "{} chunk ids: a batch has 1 to {MAX_BATCH}",
            ids.len()
        )));
    }
    let mut body = Vec::new();
    for id in &ids {
        let bytes = compressed(&state.chunks, id)?;
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(&bytes);
        if body.len() as u64 > images::http::MAX_BATCH_BYTES {
            return Err(Error::Invalid(format!(
                "the batch is larger than {} bytes: ask for fewer chunks",
                images::http::MAX_BATCH_BYTES
            )));
        }
    }
    Ok(body)
}

fn no_index(id: &ChunkId) -> impl FnOnce(images::Error) -> Error + '_ {
    move |e| match e {
        images::Error::NoImage(_) => Error::NotFound(format!(
            "no image has the index {id} (removed since it was staged?)"
        )),
        other => Error::Internal(other.to_string()),
    }
}

/// The summary of index `id` (its runs and group hashes), as stations fetch it first.
pub fn summary(images: &images::Images, id: &ChunkId) -> Result<Vec<u8>, Error> {
    let summary = images.summary_by_id(id).map_err(no_index(id))?;
    Ok(summary.as_ref().clone())
}

/// The ids of groups `first..first + count` of index `id`, 32 bytes each: what a
/// station asks for where its disk differs from the summary.
pub fn group_ids(
    images: &images::Images,
    id: &ChunkId,
    first: u64,
    count: u64,
) -> Result<Vec<u8>, Error> {
    if !(1..=images::http::MAX_GROUPS).contains(&count) {
        return Err(Error::Invalid(format!(
            "count={count}: ask for 1 to {} groups",
            images::http::MAX_GROUPS
        )));
    }
    let (_, index) = images.by_id(id).map_err(no_index(id))?;
    let ids = index.group_ids(first, count).ok_or_else(|| {
        Error::Invalid(format!(
            "index {id} has {} groups; group {first} is not one",
            index.summary().group_count()
        ))
    })?;
    Ok(ids.iter().flat_map(|i| i.0).collect())
}
