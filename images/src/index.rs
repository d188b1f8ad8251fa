//! An image's index, in two levels so that it scales to terabyte disks.
//!
//! The disk is a sequence of **runs** of chunks: zero (all zeros), free (wholly in
//! a filesystem's free space: its content does not matter and a restore empties it)
//! and data (stored chunks). Zero and free runs cost 9 bytes however long they are.
//! The ids of the data chunks, in disk order, are cut into **groups** of
//! [`GROUP_LEN`]; the [`Summary`] carries the runs and one hash per group, and is
//! all a station fetches up front: it hashes a group of its own disk, and only when
//! that differs from the summary's does it fetch the group's ids. An unchanged
//! 256 GB disk costs the summary (about 32 bytes per 8 MiB of data), not 33 bytes
//! per chunk.
//!
//! ```text
//! summary: magic "NRIDX\0\0\0" | version u32 (2) | chunk_size u32 | total_size u64
//!          | group_len u32 | run_count u64 | data_count u64
//!          | run_count x (kind u8: 0 zero, 1 data, 2 free | chunks u64)
//!          | group_count x group hash [32]       (BLAKE3 of the group's ids)
//!          | BLAKE3 of all the above [32]
//! index:   summary | data_count x id [32]
//! ```
//! Integers are little-endian. The index's id is the hash of its summary, which
//! covers the group hashes, which cover every id: a station that fetched the
//! summary by id can check every group it fetches later.

use crate::{ChunkId, Error};

const MAGIC: &[u8; 8] = b"NRIDX\0\0\0";
const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4 + 8 + 4 + 8 + 8;
const RUN: usize = 9;
const HASH: usize = 32;

/// Chunk size of imports and captures that name none: 64 KiB, from the delta
/// benchmark (BENCHMARKS.md): the only size measured that fetched fewer bytes than
/// casync for scattered 1 MiB changes, with a cold restore still faster than a full
/// copy. Every image records its own.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 10;
/// Smallest chunk size an index may use.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Largest chunk size an index may use.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest disk an index may describe (16 TiB); anything larger is a broken index.
const MAX_TOTAL_SIZE: u64 = 16 << 40;
/// Data chunks per group at most: 8 MiB of disk at 64 KiB chunks, 4 KiB of ids.
pub const GROUP_LEN: u32 = 128;
/// The data of a group at most: what a station reads and hashes at once.
pub const GROUP_BYTES: u64 = 8 << 20;

/// The group length of an index with `chunk_size` chunks: 8 MiB of data a group,
/// at most [`GROUP_LEN`] chunks.
pub fn group_len(chunk_size: u32) -> u32 {
    ((GROUP_BYTES / u64::from(chunk_size)) as u32).clamp(1, GROUP_LEN)
}

/// What a run of chunks holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// All zeros.
    Zero,
    /// Stored chunks (their ids are the index's).
    Data,
    /// Wholly in free space of a filesystem: what is there does not matter, and a
    /// restore leaves it empty.
    Free,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub kind: RunKind,
    pub chunks: u64,
}

/// One chunk of an image, as import and capture find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    Zero,
    Free,
    Data(ChunkId),
}

/// The shape of an image: its size, its chunk size and its runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u32,
    pub total_size: u64,
    pub runs: Vec<Run>,
}

/// A stretch of the disk, in chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub kind: RunKind,
    /// The first chunk.
    pub first: u64,
    pub chunks: u64,
    /// For data: the number of its first chunk among the data chunks.
    pub data_first: u64,
}

/// The chunk list of one image: its layout and the ids of its data chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub layout: Layout,
    /// The ids of the data chunks, in disk order.
    pub ids: Vec<ChunkId>,
}

/// What a station fetches first: the layout and one hash per group of ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub layout: Layout,
    pub group_len: u32,
    pub data_count: u64,
    pub groups: Vec<ChunkId>,
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

/// The hash of a group of ids.
pub fn group_hash(ids: &[ChunkId]) -> ChunkId {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(&id.0);
    }
    ChunkId(*h.finalize().as_bytes())
}

impl Layout {
    /// How many chunks the image has.
    pub fn count(&self) -> u64 {
        self.total_size.div_ceil(u64::from(self.chunk_size))
    }

    /// Length in bytes of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: u64) -> usize {
        let start = i * u64::from(self.chunk_size);
        self.total_size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as usize
    }

    /// The byte offset of chunk `i`.
    pub fn offset(&self, i: u64) -> u64 {
        i * u64::from(self.chunk_size)
    }

    /// Bytes from chunk `first` for `chunks` chunks (the last chunk may be short).
    pub fn bytes(&self, first: u64, chunks: u64) -> u64 {
        let start = self.offset(first);
        self.total_size
            .min(self.offset(first + chunks))
            .saturating_sub(start)
    }

    /// The runs, with where each starts.
    pub fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        let (mut first, mut data) = (0u64, 0u64);
        self.runs.iter().map(move |r| {
            let e = Extent {
                kind: r.kind,
                first,
                chunks: r.chunks,
                data_first: data,
            };
            first += r.chunks;
            if r.kind == RunKind::Data {
                data += r.chunks;
            }
            e
        })
    }

    /// How many data chunks.
    pub fn data_count(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.kind == RunKind::Data)
            .map(|r| r.chunks)
            .sum()
    }

    /// Bytes in chunks of `kind`.
    pub fn bytes_of(&self, kind: RunKind) -> u64 {
        self.extents()
            .filter(|e| e.kind == kind)
            .map(|e| self.bytes(e.first, e.chunks))
            .sum()
    }

    /// Where the data chunks `from..to` (numbered among the data chunks) are on the
    /// disk: (first chunk, chunks) pieces in disk order.
    pub fn data_pieces(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for e in self.extents().filter(|e| e.kind == RunKind::Data) {
            let (lo, hi) = (e.data_first.max(from), (e.data_first + e.chunks).min(to));
            if lo < hi {
                out.push((e.first + (lo - e.data_first), hi - lo));
            }
            if e.data_first + e.chunks >= to {
                break;
            }
        }
        out
    }

    fn check(&self) -> Result<(), String> {
        if self.total_size > MAX_TOTAL_SIZE {
            return Err(format!(
                "total size {} is larger than 16 TiB",
                self.total_size
            ));
        }
        let mut sum = 0u64;
        for (i, r) in self.runs.iter().enumerate() {
            if r.chunks == 0 {
                return Err(format!("run {i} is empty"));
            }
            if i > 0 && self.runs[i - 1].kind == r.kind {
                return Err(format!("runs {} and {i} are of one kind", i - 1));
            }
            sum = sum.saturating_add(r.chunks);
        }
        if sum != self.count() {
            return Err(format!(
                "{sum} chunks listed, {} needed for {} bytes",
                self.count(),
                self.total_size
            ));
        }
        Ok(())
    }
}

impl Index {
    /// The index of `chunks` (in disk order), runs merged.
    pub fn build(
        chunk_size: u32,
        total_size: u64,
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> Index {
        let mut runs: Vec<Run> = Vec::new();
        let mut ids = Vec::new();
        for c in chunks {
            let kind = match c {
                Chunk::Zero => RunKind::Zero,
                Chunk::Free => RunKind::Free,
                Chunk::Data(id) => {
                    ids.push(id);
                    RunKind::Data
                }
            };
            match runs.last_mut() {
                Some(r) if r.kind == kind => r.chunks += 1,
                _ => runs.push(Run { kind, chunks: 1 }),
            }
        }
        Index {
            layout: Layout {
                chunk_size,
                total_size,
                runs,
            },
            ids,
        }
    }

    /// Every chunk, in disk order.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        self.layout.extents().flat_map(move |e| {
            (0..e.chunks).map(move |k| match e.kind {
                RunKind::Zero => Chunk::Zero,
                RunKind::Free => Chunk::Free,
                RunKind::Data => Chunk::Data(self.ids[(e.data_first + k) as usize]),
            })
        })
    }

    /// Chunk `i`.
    pub fn chunk(&self, i: u64) -> Option<Chunk> {
        let e = self
            .layout
            .extents()
            .find(|e| (e.first..e.first + e.chunks).contains(&i))?;
        Some(match e.kind {
            RunKind::Zero => Chunk::Zero,
            RunKind::Free => Chunk::Free,
            RunKind::Data => Chunk::Data(self.ids[(e.data_first + i - e.first) as usize]),
        })
    }

    /// The summary: the layout and the group hashes.
    pub fn summary(&self) -> Summary {
        let group_len = group_len(self.layout.chunk_size);
        Summary {
            layout: self.layout.clone(),
            group_len,
            data_count: self.ids.len() as u64,
            groups: self
                .ids
                .chunks(group_len as usize)
                .map(group_hash)
                .collect(),
        }
    }

    /// The binary form: the summary, then every id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.summary().encode();
        out.reserve(self.ids.len() * HASH);
        for id in &self.ids {
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// Parse and check the binary form: the summary, and every group against it.
    pub fn decode(bytes: &[u8]) -> Result<Index, Error> {
        let (summary, used) = Summary::decode_prefix(bytes)?;
        let rest = &bytes[used..];
        let want = summary.data_count as usize * HASH;
        if rest.len() != want {
            return Err(Error::BadIndex(format!(
                "{} bytes of ids, expected {want} (truncated or padded)",
                rest.len()
            )));
        }
        let ids: Vec<ChunkId> = rest
            .chunks(HASH)
            .map(|c| ChunkId(c.try_into().expect("32 bytes")))
            .collect();
        for (k, group) in ids.chunks(summary.group_len as usize).enumerate() {
            if group_hash(group) != summary.groups[k] {
                return Err(Error::BadIndex(format!(
                    "the ids of group {k} do not match its hash (the index was altered or damaged)"
                )));
            }
        }
        Ok(Index {
            layout: summary.layout,
            ids,
        })
    }

    /// The index's own id: the hash of its summary.
    pub fn id(&self) -> ChunkId {
        self.summary().id()
    }

    /// The ids of groups `first..first + count`, concatenated (what a station asks
    /// for when its disk differs there).
    pub fn group_ids(&self, first: u64, count: u64) -> Option<&[ChunkId]> {
        let g = u64::from(group_len(self.layout.chunk_size));
        let from = first.checked_mul(g)?;
        let to = first
            .checked_add(count)?
            .checked_mul(g)?
            .min(self.ids.len() as u64);
        (count > 0 && from < to).then(|| &self.ids[from as usize..to as usize])
    }
}

impl Summary {
    pub fn group_count(&self) -> u64 {
        self.data_count.div_ceil(u64::from(self.group_len))
    }

    /// The data chunks of group `k` (numbered among the data chunks).
    pub fn group_range(&self, k: u64) -> (u64, u64) {
        let g = u64::from(self.group_len);
        (k * g, ((k + 1) * g).min(self.data_count))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER + self.layout.runs.len() * RUN + (self.groups.len() + 1) * HASH,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.layout.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.layout.total_size.to_le_bytes());
        out.extend_from_slice(&self.group_len.to_le_bytes());
        out.extend_from_slice(&(self.layout.runs.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.data_count.to_le_bytes());
        for r in &self.layout.runs {
            out.push(match r.kind {
                RunKind::Zero => 0,
                RunKind::Data => 1,
                RunKind::Free => 2,
            });
            out.extend_from_slice(&r.chunks.to_le_bytes());
        }
        for g in &self.groups {
            out.extend_from_slice(&g.0);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parse and check a summary that is all of `bytes`; with `expect`, its hash must
    /// be that id.
    pub fn decode(bytes: &[u8], expect: Option<&ChunkId>) -> Result<Summary, Error> {
        let (summary, used) = Summary::decode_prefix(bytes)?;
        if used != bytes.len() {
            return Err(Error::BadIndex(format!(
                "{} bytes after the summary",
                bytes.len() - used
            )));
        }
        if let Some(want) = expect {
            let got = ChunkId::of(bytes);
            if got != *want {
                return Err(Error::BadIndex(format!(
                    "its hash is {got}, not the requested {want} (altered or damaged)"
                )));
            }
        }
        Ok(summary)
    }

    /// The summary at the start of `bytes`, and how many bytes it took.
    fn decode_prefix(bytes: &[u8]) -> Result<(Summary, usize), Error> {
        let bad = |why: String| Error::BadIndex(why);
        if bytes.len() < HEADER + HASH {
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
                "unknown index format version {version} (this netreset reads {VERSION}; \
                 import the image again)"
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
        let group_len = u32_at(24);
        if group_len == 0 || u64::from(group_len) * u64::from(chunk_size) > GROUP_BYTES {
            return Err(bad(format!("group length {group_len} is out of range")));
        }
        let (run_count, data_count) = (u64_at(28), u64_at(36));
        let count = total_size.div_ceil(u64::from(chunk_size));
        if run_count > count || data_count > count {
            return Err(bad(format!(
                "{run_count} runs and {data_count} data chunks for {count} chunks"
            )));
        }
        let group_count = data_count.div_ceil(u64::from(group_len));
        let body = HEADER + run_count as usize * RUN + group_count as usize * HASH;
        if bytes.len() < body + HASH {
            return Err(bad(format!(
                "{} bytes, the summary needs {} (truncated)",
                bytes.len(),
                body + HASH
            )));
        }
        if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..body + HASH] {
            return Err(bad(
                "checksum mismatch (the index was altered or damaged)".into()
            ));
        }
        let mut runs = Vec::with_capacity(run_count as usize);
        for (i, raw) in bytes[HEADER..HEADER + run_count as usize * RUN]
            .chunks(RUN)
            .enumerate()
        {
            let kind = match raw[0] {
                0 => RunKind::Zero,
                1 => RunKind::Data,
                2 => RunKind::Free,
                k => return Err(bad(format!("run {i} has unknown kind {k}"))),
            };
            let chunks = u64::from_le_bytes(raw[1..].try_into().expect("8 bytes"));
            runs.push(Run { kind, chunks });
        }
        let layout = Layout {
            chunk_size,
            total_size,
            runs,
        };
        layout.check().map_err(bad)?;
        if layout.data_count() != data_count {
            return Err(bad(format!(
                "{data_count} data chunks declared, the runs hold {}",
                layout.data_count()
            )));
        }
        let groups = bytes[HEADER + run_count as usize * RUN..body]
            .chunks(HASH)
            .map(|c| ChunkId(c.try_into().expect("32 bytes")))
            .collect();
        Ok((
            Summary {
                layout,
                group_len,
                data_count,
                groups,
            },
            body + HASH,
        ))
    }

    /// The summary's id: the hash of its encoding (and the index's id).
    pub fn id(&self) -> ChunkId {
        ChunkId::of(&self.encode())
    }

    /// Check ids fetched for groups `first..`: as many as those groups hold, each
    /// group matching its hash.
    pub fn check_group_ids(&self, first: u64, ids: &[ChunkId]) -> Result<(), Error> {
        let mut at = 0usize;
        let mut k = first;
        while at < ids.len() {
            if k >= self.group_count() {
                return Err(Error::BadIndex(format!(
                    "{} ids past the last group",
                    ids.len() - at
                )));
            }
            let (lo, hi) = self.group_range(k);
            let n = (hi - lo) as usize;
            let Some(group) = ids.get(at..at + n) else {
                return Err(Error::BadIndex(format!(
                    "group {k} has {} of its {n} ids",
                    ids.len() - at
                )));
            };
            if group_hash(group) != self.groups[k as usize] {
                return Err(Error::BadIndex(format!(
                    "the ids fetched for group {k} do not match its hash"
                )));
            }
            at += n;
            k += 1;
        }
        Ok(())
    }
}

/// Ids as sent over the wire: 32 bytes each.
pub fn ids_from_bytes(bytes: &[u8]) -> Result<Vec<ChunkId>, Error> {
    if bytes.len() % HASH != 0 {
        return Err(Error::BadIndex(format!(
            "{} bytes is not a whole number of ids",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks(HASH)
        .map(|c| ChunkId(c.try_into().expect("32 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index::build(
            MIN_CHUNK_SIZE,
            5 * u64::from(MIN_CHUNK_SIZE) - 100,
            [
                Chunk::Data(ChunkId::of(b"a")),
                Chunk::Zero,
                Chunk::Free,
                Chunk::Free,
                Chunk::Data(ChunkId::of(b"c")),
            ],
        )
    }

    /// `n` data chunks, then 10 free, then `n` data chunks.
    fn large(n: u64) -> Index {
        let data =
            |base: u64| (0..n).map(move |i| Chunk::Data(ChunkId::of(&(base + i).to_le_bytes())));
        let chunks = data(0).chain((0..10).map(|_| Chunk::Free)).chain(data(n));
        Index::build(
            MIN_CHUNK_SIZE,
            (2 * n + 10) * u64::from(MIN_CHUNK_SIZE),
            chunks,
        )
    }

    #[test]
    fn index_round_trips_merges_runs_and_knows_its_chunk_lengths() {
        let index = sample();
        assert_eq!(Index::decode(&index.encode()).unwrap(), index);
        assert_eq!(
            index.layout.runs.len(),
            4,
            "the two free chunks are one run"
        );
        assert_eq!(index.layout.chunk_len(0), MIN_CHUNK_SIZE as usize);
        assert_eq!(index.layout.chunk_len(4), MIN_CHUNK_SIZE as usize - 100);
        assert_eq!(index.chunk(2), Some(Chunk::Free));
        assert_eq!(index.chunk(4), Some(Chunk::Data(ChunkId::of(b"c"))));
        assert_eq!(index.chunk(5), None);
        assert_eq!(index.chunks().collect::<Vec<_>>().len(), 5);
        assert_eq!(
            index.layout.bytes_of(RunKind::Free),
            2 * u64::from(MIN_CHUNK_SIZE)
        );
    }

    #[test]
    fn free_and_zero_runs_cost_nine_bytes_however_long() {
        let size = 1u64 << 40;
        let cs = MIN_CHUNK_SIZE;
        let count = size / u64::from(cs);
        let index = Index::build(
            cs,
            size,
            std::iter::once(Chunk::Data(ChunkId::of(b"boot")))
                .chain((1..count / 2).map(|_| Chunk::Free))
                .chain((count / 2..count).map(|_| Chunk::Zero)),
        );
        let bytes = index.encode();
        assert!(
            bytes.len() < 200,
            "a 1 TiB index of runs is {} bytes",
            bytes.len()
        );
        assert_eq!(Index::decode(&bytes).unwrap(), index);
    }

    #[test]
    fn the_summary_is_what_the_id_names_and_checks_fetched_groups() {
        let index = large(300);
        let summary = index.summary();
        assert_eq!(summary.group_count(), 5, "600 ids in groups of 128");
        let bytes = summary.encode();
        assert_eq!(Summary::decode(&bytes, Some(&index.id())).unwrap(), summary);
        assert!(
            bytes.len() < 300,
            "the summary holds no ids: {} bytes",
            bytes.len()
        );
        let ids = index.group_ids(1, 2).unwrap();
        assert_eq!(ids.len(), 256);
        summary.check_group_ids(1, ids).unwrap();
        let mut altered = ids.to_vec();
        altered[3] = ChunkId::of(b"evil");
        let err = summary
            .check_group_ids(1, &altered)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group 1"), "{err}");
        let err = summary
            .check_group_ids(1, &ids[..200])
            .unwrap_err()
            .to_string();
        assert!(err.contains("group 2 has 72 of its 128"), "{err}");
        let last = index.group_ids(4, 9).unwrap();
        assert_eq!(last.len(), 600 - 512, "the last group is short");
        summary.check_group_ids(4, last).unwrap();
        assert!(index.group_ids(5, 1).is_none());
        let err = Summary::decode(&bytes, Some(&ChunkId::of(b"x"))).unwrap_err();
        assert!(err.to_string().contains("not the requested"), "{err}");
    }

    #[test]
    fn a_group_holds_8_mib_of_data_whatever_the_chunk_size() {
        assert_eq!(group_len(64 << 10), 128);
        assert_eq!(group_len(1 << 20), 8);
        assert_eq!(group_len(16 << 20), 1);
        let index = Index::build(
            1 << 20,
            20 << 20,
            (0..20u64).map(|i| Chunk::Data(ChunkId::of(&i.to_le_bytes()))),
        );
        let summary = index.summary();
        assert_eq!((summary.group_len, summary.group_count()), (8, 3));
        assert_eq!(index.group_ids(2, 1).unwrap().len(), 4);
        // A summary whose groups would be larger than 8 MiB is refused.
        let mut big = summary.clone();
        big.group_len = 9;
        big.groups.truncate(3);
        let err = Summary::decode(&big.encode(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group length 9"), "{err}");
    }

    #[test]
    fn data_pieces_map_data_chunks_to_disk_chunks_across_runs() {
        let index = large(300);
        assert_eq!(index.layout.data_pieces(0, 128), vec![(0, 128)]);
        assert_eq!(
            index.layout.data_pieces(256, 384),
            vec![(256, 44), (310, 84)],
            "the group straddles the free run"
        );
        assert_eq!(index.layout.data_pieces(512, 600), vec![(522, 88)]);
    }

    #[test]
    fn damaged_indexes_are_refused_with_the_reason() {
        let good = sample().encode();
        let runs_at = HEADER;
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            (good[..20].to_vec(), "too short"),
            ([&good[..], &[0]].concat(), "padded"),
            (with(&|b| b[0] = b'X'), "magic"),
            (with(&|b| b[8] = 1), "version 1"),
            (
                with(&|b| b[12..16].copy_from_slice(&1000u32.to_le_bytes())),
                "chunk size",
            ),
            (with(&|b| b[runs_at + 5] ^= 1), "checksum"),
            (
                with(&|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())),
                "16 TiB",
            ),
            (
                with(&|b| {
                    let n = b.len();
                    b[n - 1] ^= 1
                }),
                "group 0",
            ),
        ];
        for (bytes, why) in cases {
            let err = Index::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn inconsistent_runs_are_refused_even_with_a_good_checksum() {
        let reseal = |layout: Layout, data_count: u64| {
            let s = Summary {
                layout,
                group_len: GROUP_LEN,
                data_count,
                groups: vec![group_hash(&[ChunkId::of(b"a")])],
            };
            Summary::decode(&s.encode(), None).unwrap_err().to_string()
        };
        let layout = |runs: Vec<(RunKind, u64)>| Layout {
            chunk_size: MIN_CHUNK_SIZE,
            total_size: 3 * u64::from(MIN_CHUNK_SIZE),
            runs: runs
                .into_iter()
                .map(|(kind, chunks)| Run { kind, chunks })
                .collect(),
        };
        use RunKind::*;
        let err = reseal(layout(vec![(Data, 1), (Free, 1)]), 1);
        assert!(err.contains("2 chunks listed, 3 needed"), "{err}");
        let err = reseal(layout(vec![(Data, 1), (Free, 0), (Zero, 2)]), 1);
        assert!(err.contains("empty"), "{err}");
        let err = reseal(layout(vec![(Data, 1), (Free, 1), (Free, 1)]), 1);
        assert!(err.contains("of one kind"), "{err}");
        let err = reseal(layout(vec![(Data, 1), (Zero, 2)]), 2);
        assert!(err.contains("the runs hold 1"), "{err}");
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
