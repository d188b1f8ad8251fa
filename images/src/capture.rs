//! Capture: a station's disk read into the server's chunk store, as an import reads
//! a file into this one ([`crate::import`]'s scan: the same allocation rules, the
//! same chunks, so a capture and an import of the same disk give the same index).
//! Each scanning thread hashes a few MiB of chunks, asks the server which it lacks,
//! and uploads only those, compressed. The disk is opened read-only: a capture never
//! writes it.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pxe::MacAddr;

use crate::error::io;
use crate::http::{Client, MAX_BATCH_BYTES};
use crate::import::{scan, Imported, Scope, Sink, Writer};
use crate::partition::{self, Fs};
use crate::{ChunkId, Error};

/// zstd level of uploads: the store's.
const ZSTD_LEVEL: i32 = 3;

/// What a capture did.
#[derive(Debug)]
pub struct Captured {
    pub imported: Imported,
    /// Chunks the server lacked, uploaded.
    pub chunks_uploaded: u64,
    /// Their compressed bytes (the wire).
    pub bytes_uploaded: u64,
}

/// Where a capture's chunks go: the server, through `client`.
pub struct Upload<'c> {
    client: &'c Client,
    mac: MacAddr,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl<'c> Upload<'c> {
    pub fn new(client: &'c Client, mac: MacAddr) -> Upload<'c> {
        Upload {
            client,
            mac,
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Chunks and bytes uploaded so far.
    pub fn uploaded(&self) -> (u64, u64) {
        (self.chunks.load(Relaxed), self.bytes.load(Relaxed))
    }
}

impl Sink for Upload<'_> {
    fn writer(&self) -> Box<dyn Writer + '_> {
        Box::new(UploadWriter(self))
    }
}

struct UploadWriter<'u, 'c>(&'u Upload<'c>);

impl Writer for UploadWriter<'_, '_> {
    fn put(&mut self, chunks: &[&[u8]]) -> Result<Vec<(ChunkId, bool)>, Error> {
        let up = self.0;
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        let missing = up.client.missing(&up.mac, &ids)?;
        let mut frames = Vec::new();
        let mut sent: Vec<ChunkId> = Vec::new();
        for ((id, data), &lacks) in ids.iter().zip(chunks).zip(&missing) {
            // Twice in this batch: once is enough.
            if !lacks || sent.contains(id) {
                continue;
            }
            let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)
                .map_err(|e| Error::Usage(format!("zstd: {e}")))?;
            if !frames.is_empty() && (frames.len() + 36 + compressed.len()) as u64 > MAX_BATCH_BYTES
            {
                self.send(std::mem::take(&mut frames))?;
            }
            frames.extend_from_slice(&id.0);
            frames.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            frames.extend_from_slice(&compressed);
            sent.push(*id);
        }
        if !frames.is_empty() {
            self.send(frames)?;
        }
        up.chunks.fetch_add(sent.len() as u64, Relaxed);
        Ok(ids
            .into_iter()
            .map(|id| {
                let new = sent.contains(&id);
                (id, new)
            })
            .collect())
    }

    fn finish(&mut self) -> Result<(), Error> {
        // The server made each upload durable before it answered.
        Ok(())
    }
}

impl UploadWriter<'_, '_> {
    fn send(&self, frames: Vec<u8>) -> Result<(), Error> {
        let len = frames.len() as u64;
        self.0.client.upload(&self.0.mac, frames)?;
        self.0.bytes.fetch_add(len, Relaxed);
        Ok(())
    }
}

/// Refuse a disk with a BitLocker volume: what it holds cannot be read, and an image
/// of ciphertext is of no use to another PC.
pub fn refuse_encrypted(file: &File, path: &Path) -> Result<(), Error> {
    let parts = match partition::partitions_in(&mut &*file, path) {
        Ok(parts) => parts,
        Err(Error::Partitions { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let locked: Vec<String> = parts
        .iter()
        .filter(|p| p.fs == Fs::BitLocker)
        .map(|p| p.number.to_string())
        .collect();
    if locked.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{}: partition {} is BitLocker-encrypted: a capture would hold only ciphertext. \
         Turn BitLocker off on this PC (manage-bde -off C:, then wait for decryption to end) \
         and capture again",
        path.display(),
        locked.join(", ")
    )))
}

/// Capture the disk `disk` into the server's store in `chunk_size` pieces through
/// `upload`; `progress(bytes_done)` as [`crate::import`]'s. The index is returned,
/// not sent: the caller sends it last.
pub fn capture(
    disk: &Path,
    chunk_size: u64,
    upload: &Upload<'_>,
    progress: impl FnMut(u64),
) -> Result<Captured, Error> {
    let file = File::open(disk).map_err(io(disk))?;
    refuse_encrypted(&file, disk)?;
    let imported = scan(&file, disk, chunk_size, Scope::Used, upload, progress)?;
    let (chunks_uploaded, bytes_uploaded) = upload.uploaded();
    Ok(Captured {
        imported,
        chunks_uploaded,
        bytes_uploaded,
    })
}
