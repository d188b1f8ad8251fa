//! The `images` crate's error type: every variant names the file, image or chunk.

use std::path::PathBuf;

use crate::ChunkId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a chunk id: {0:?} (expected 64 hex digits)")]
    BadChunkId(String),
    #[error("chunk {id} is missing from the store")]
    MissingChunk { id: ChunkId },
    #[error("chunk {id} is corrupt: {why}")]
    CorruptChunk { id: ChunkId, why: String },
    #[error("image index: {0}")]
    BadIndex(String),
    #[error("not an image name: {0:?} (letters, digits, '.', '_', '-'; at most 64; not starting with '.')")]
    BadName(String),
    #[error("no image named {0:?}")]
    NoImage(String),
    #[error("an image named {0:?} exists already")]
    ImageExists(String),
    #[error("chunk size {0} is not a power of two between 64 KiB and 16 MiB")]
    BadChunkSize(u64),
    #[error("staged image: {0}")]
    BadStaged(String),
    #[error("template: {0}")]
    Template(String),
    #[error("{disk}: {why}")]
    Partitions { disk: PathBuf, why: String },
    #[error("injection: {0}")]
    Inject(String),
    #[error("{url}: {why}")]
    Fetch { url: String, why: String },
    #[error("{0}")]
    Usage(String),
    #[error("{disk} has {size} bytes, the image needs {needed}: wrong --disk, or an image for a larger disk")]
    DiskTooSmall {
        disk: PathBuf,
        size: u64,
        needed: u64,
    },
}

/// Attach the path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
