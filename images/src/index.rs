//! An image's index: chunk size, total size and the ordered chunk ids (`None` for an
//! all-zero chunk). Binary, versioned, and checksummed, so that a truncated or altered
//! index is refused before a single byte of a disk is touched.
//!
//! ```text
//! magic "NRIDX\0\0\0" | version u32 | chunk_size u32 | total_size u64 | count u64
//! count x (kind u8: 0 zero, 1 stored | id [32])  | BLAKE3 of all the above [32]
//! ```
//! Integers are little-endian.

use crate::{ChunkId, Error};

const MAGIC: &[u8; 8] = b"NRIDX\0\0\0";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 8;
const ENTRY: usize = 33;
const CHECKSUM: usize = 32;

/// Smallest chunk size an index may use.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Largest chunk size an index may use.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest disk an index may describe (16 TiB); anything larger is a broken index.
const MAX_TOTAL_SIZE: u64 = 16 << 40;

/// The chunk list of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub chunk_size: u32,
    pub total_size: u64,
    /// One entry per chunk, in disk order; `None` is a chunk of zeros.
    pub chunks: Vec<Option<ChunkId>>,
}

/// Check a chunk size: a power of two from 64 KiB to 16 MiB.
pub fn check_chunk_size(size: u64) -> Result<u32, Error> {
    if size.is_power_of_two()
        && (u64::from(MIN_CHUNK_SIZE)..=u64::from(MAX_CHUNK_SIZE)).contains(&size)
    {
        Ok(size as u32)
    } else {
        Err(Error::BadChunkSize(size))
    }
}

impl Index {
    /// Length in bytes of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * u64::from(self.chunk_size);
        self.total_size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as usize
    }

    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.chunks.len() * ENTRY + CHECKSUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.total_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for entry in &self.chunks {
            match entry {
                None => out.extend_from_slice(&[0u8; ENTRY]),
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.0);
                }
            }
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parse and check the binary form.
    pub fn decode(bytes: &[u8]) -> Result<Index, Error> {
        let bad = |why: String| Error::BadIndex(why);
        if bytes.len() < HEADER + CHECKSUM {
            return Err(bad(format!(
                "{} bytes is too short for an index",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad("not a netreset image index (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "unknown index format version {version} (this netreset reads {VERSION})"
            )));
        }
        let chunk_size = check_chunk_size(u64::from(u32_at(12)))
            .map_err(|_| bad(format!("chunk size {} is out of range", u32_at(12))))?;
        let total_size = u64_at(16);
        if total_size > MAX_TOTAL_SIZE {
            return Err(bad(format!(
                "total size {total_size} is larger than 16 TiB"
            )));
        }
        let count = u64_at(24);
        let expected = total_size.div_ceil(u64::from(chunk_size));
        if count != expected {
            return Err(bad(format!(
                "{count} chunks listed, {expected} needed for {total_size} bytes"
            )));
        }
        let body = HEADER + count as usize * ENTRY;
        if bytes.len() != body + CHECKSUM {
            return Err(bad(format!(
                "{} bytes, expected {} (truncated or padded)",
                bytes.len(),
                body + CHECKSUM
            )));
        }
        if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
            return Err(bad(
                "checksum mismatch (the index was altered or damaged)".into()
            ));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for (i, entry) in bytes[HEADER..body].chunks(ENTRY).enumerate() {
            let id: [u8; 32] = entry[1..].try_into().expect("32 bytes");
            chunks.push(match entry[0] {
                0 if id == [0; 32] => None,
                1 => Some(ChunkId(id)),
                kind => return Err(bad(format!("entry {i} has unknown kind {kind}"))),
            });
        }
        Ok(Index {
            chunk_size,
            total_size,
            chunks,
        })
    }

    /// The index's own id: the hash of its binary form.
    pub fn id(&self) -> ChunkId {
        ChunkId::of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            chunk_size: MIN_CHUNK_SIZE,
            total_size: 3 * u64::from(MIN_CHUNK_SIZE) - 100,
            chunks: vec![Some(ChunkId::of(b"a")), None, Some(ChunkId::of(b"c"))],
        }
    }

    #[test]
    fn index_round_trips_and_knows_its_chunk_lengths() {
        let index = sample();
        assert_eq!(Index::decode(&index.encode()).unwrap(), index);
        assert_eq!(index.chunk_len(0), MIN_CHUNK_SIZE as usize);
        assert_eq!(index.chunk_len(2), MIN_CHUNK_SIZE as usize - 100);
    }

    #[test]
    fn damaged_indexes_are_refused_with_the_reason() {
        let good = sample().encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            (good[..20].to_vec(), "too short"),
            ([&good[..], &[0]].concat(), "padded"),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                "magic",
            ),
            (
                {
                    let mut b = good.clone();
                    b[8] = 2;
                    b
                },
                "version 2",
            ),
            (
                {
                    let mut b = good.clone();
                    b[12..16].copy_from_slice(&1000u32.to_le_bytes());
                    b
                },
                "chunk size",
            ),
            (
                {
                    let mut b = good.clone();
                    b[24] = 4;
                    b
                },
                "4 chunks listed",
            ),
            (
                {
                    let mut b = good.clone();
                    b[HEADER + 5] ^= 1;
                    b
                },
                "checksum",
            ),
            (
                {
                    let mut b = good.clone();
                    b[16..24].copy_from_slice(&(u64::MAX).to_le_bytes());
                    b
                },
                "16 TiB",
            ),
        ];
        for (bytes, why) in cases {
            let err = Index::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn chunk_sizes_must_be_powers_of_two_in_range() {
        assert!(check_chunk_size(64 << 10).is_ok());
        assert!(check_chunk_size(4 << 20).is_ok());
        for bad in [0, 4096, (64 << 10) + 1, 32 << 20, 3 << 20] {
            assert!(check_chunk_size(bad).is_err(), "{bad}");
        }
    }
}
