//! Disk images for netreset: a content-addressed chunk store (BLAKE3 ids, zstd on
//! disk, all-zero chunks never stored, deduplicated across images), the index that
//! lists an image's chunks in order, and import of raw disk images.
//!
//! [`restore`] brings a disk to an image in place, fetching only the chunks that
//! differ. Staging, injection and the HTTP restore client build on these (issue 3).

mod chunk;
mod error;
mod import;
mod index;
mod restore;
mod store;

pub use chunk::ChunkId;
pub use error::Error;
pub use import::{import, Imported};
pub use index::{Index, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use restore::{restore, Fetch, RestoreStats};
pub use store::{check_name, decode_chunk, ChunkStore, GcStats, Images};
