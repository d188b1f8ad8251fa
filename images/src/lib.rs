//! Disk images for netreset: a content-addressed chunk store (BLAKE3 ids, zstd on
//! disk, all-zero chunks never stored, deduplicated across images), the index that
//! lists an image's chunks in order, and import of raw disk images.
//!
//! A [`Staged`] image is an index plus the files injected into the restored disk
//! ([`inject`]: FAT in-process, NTFS through ntfs-3g). [`restore`] brings a disk to
//! an image in place, fetching only the chunks that differ; [`http::Client`] fetches
//! them from the orchestrator for the `netreset-restore` binary.

pub mod alloc;
pub mod capture;
mod chunk;
pub mod client;
mod error;
pub mod hive;
pub mod http;
mod import;
mod index;
pub mod inject;
pub mod inspect;
pub mod partition;
pub mod peer;
mod reader;
mod restore;
pub mod sample;
mod staged;
mod store;

pub use chunk::ChunkId;
pub use error::Error;
pub use import::{import, import_with, Imported, Scope, Sink, Writer};
pub use index::{
    check_chunk_size, group_hash, ids_from_bytes, Chunk, Extent, Index, Layout, Run, RunKind,
    Summary, DEFAULT_CHUNK_SIZE, GROUP_LEN, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use reader::ImageReader;
pub use restore::{restore, Fetch, Local, RestoreStats};
pub use staged::{
    check_inject_path, check_kms_host, InjectFile, KmsSettings, Profile, Staged, Target, WindowsFs,
    STAGED_VERSION,
};
pub use store::{check_name, decode_chunk, ChunkStore, GcStats, Images};
