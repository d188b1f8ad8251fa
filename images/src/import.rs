//! Import of a raw disk image (a file or a block device) into the chunk store.
//!
//! First the partitions' allocation ([`crate::alloc`]): a chunk wholly in the free
//! space of an NTFS or FAT filesystem is recorded as free and never read. The holes
//! of a sparse file (`SEEK_DATA`/`SEEK_HOLE`) are zero chunks without a read. The
//! rest is read, checked for zeros, hashed, compressed and stored by one thread per
//! core, each with `pread` at its own chunks: compression is what costs, and it
//! spreads over the cores.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use crate::error::io;
use crate::index::{check_chunk_size, Chunk};
use crate::{ChunkId, ChunkStore, Error, Index};

/// Import threads at most (the store's disk is the limit past a few cores).
const MAX_THREADS: usize = 8;

/// What an import keeps of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// What the filesystems use, and everything that is not in a filesystem's free
    /// space (the default).
    Used,
    /// Every byte, free space included (`--whole-disk`): a restore then brings back
    /// deleted files too.
    Everything,
}

/// What an import did.
#[derive(Debug, PartialEq, Eq)]
pub struct Imported {
    pub index: Index,
    /// Chunks written to the store (the rest were there already, or zeros).
    pub new_chunks: u64,
    pub zero_chunks: u64,
    /// Chunks wholly in free space: not read, not stored.
    pub free_chunks: u64,
    pub bytes_read: u64,
    /// Partitions whose free space could not be used, and why.
    pub notes: Vec<String>,
}

/// Import `path` in `chunk_size` pieces into `store`, keeping what its filesystems
/// use ([`Scope::Used`]); see [`import_with`].
pub fn import(
    store: &ChunkStore,
    path: &Path,
    chunk_size: u64,
    progress: impl FnMut(u64),
) -> Result<Imported, Error> {
    import_with(store, path, chunk_size, Scope::Used, progress)
}

/// Read `path` in `chunk_size` pieces into `store`, calling `progress(bytes_done)`
/// as chunks are done (from the calling thread, in no particular order of chunks).
/// All-zero chunks, holes included, are recorded as zeros and not stored; with
/// [`Scope::Used`], chunks in free space are recorded as free and not read.
pub fn import_with(
    store: &ChunkStore,
    path: &Path,
    chunk_size: u64,
    scope: Scope,
    progress: impl FnMut(u64),
) -> Result<Imported, Error> {
    let file = File::open(path).map_err(io(path))?;
    scan(&file, path, chunk_size, scope, &Local(store), progress)
}

/// Where the chunks a [`scan`] reads go: the store here (an import), or the
/// server's (a capture, [`crate::capture`]).
pub trait Sink: Sync {
    /// A writer for one scanning thread.
    fn writer(&self) -> Box<dyn Writer + '_>;
}

/// One scanning thread's way into a [`Sink`].
pub trait Writer {
    /// Keep `chunks` (consecutive in the scan, none all zeros): for each, in order,
    /// its id and whether it was new there.
    fn put(&mut self, chunks: &[&[u8]]) -> Result<Vec<(ChunkId, bool)>, Error>;
    /// Make everything put durable; the index may name it after this.
    fn finish(&mut self) -> Result<(), Error>;
}

/// The local chunk store as a [`Sink`]: each thread writes one [`crate::store::Batch`].
struct Local<'s>(&'s ChunkStore);

impl Sink for Local<'_> {
    fn writer(&self) -> Box<dyn Writer + '_> {
        Box::new(self.0.batch())
    }
}

impl Writer for crate::store::Batch<'_> {
    fn put(&mut self, chunks: &[&[u8]]) -> Result<Vec<(ChunkId, bool)>, Error> {
        chunks
            .iter()
            .map(|c| crate::store::Batch::put(self, c))
            .collect()
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.commit()
    }
}

/// Bytes a scanning thread reads before it hands them to its writer at once (a
/// capture asks the server which of them it lacks in one request).
const WORK_BYTES: u64 = 4 << 20;

/// Read `file` (`path` in messages) in `chunk_size` pieces into `sink`: the
/// allocation first (with [`Scope::Used`]), then every chunk that holds data and is
/// not free, by one thread per core with `pread`, a few MiB at a time.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    chunk_size: u64,
    scope: Scope,
    sink: &dyn Sink,
    mut progress: impl FnMut(u64),
) -> Result<Imported, Error> {
    let chunk_size = check_chunk_size(chunk_size)?;
    let cs = u64::from(chunk_size);
    let total = size(file).map_err(io(path))?;
    let count = total.div_ceil(cs) as usize;
    let chunk_len = |i: usize| cs.min(total - i as u64 * cs) as usize;
    let (allocation, notes) = match scope {
        Scope::Used => {
            let mut a = crate::alloc::allocation(&mut &*file, path)?;
            let notes = std::mem::take(&mut a.notes);
            (Some(a), notes)
        }
        Scope::Everything => (None, Vec::new()),
    };
    let free: Vec<bool> = (0..count)
        .map(|i| {
            allocation.as_ref().is_some_and(|a| {
                let start = i as u64 * cs;
                a.free(start, start + chunk_len(i) as u64)
            })
        })
        .collect();
    // Which chunks hold data: those that meet a data range of the file.
    let mut has_data = vec![false; count];
    for (start, end) in data_ranges(file, total).map_err(io(path))? {
        let (first, last) = (
            (start / cs) as usize,
            (end.div_ceil(cs) as usize).min(count),
        );
        has_data[first..last].fill(true);
    }
    let todo: Vec<usize> = (0..count).filter(|&i| has_data[i] && !free[i]).collect();
    let per_unit = (WORK_BYTES / cs).max(1) as usize;
    let slots: Vec<Mutex<Option<ChunkId>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let (next, done, read, new_chunks) = (
        AtomicUsize::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let exited = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS);
    // Holes and free space count as done at once.
    let skipped: u64 = (0..count)
        .filter(|&i| !has_data[i] || free[i])
        .map(|i| chunk_len(i) as u64)
        .sum();
    done.store(skipped, Relaxed);
    let fail = |e: Error| {
        failed.lock().expect("not poisoned").get_or_insert(e);
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = vec![0u8; per_unit * chunk_size as usize];
                let mut writer = sink.writer();
                while failed.lock().expect("not poisoned").is_none() {
                    let first = next.fetch_add(per_unit, Relaxed);
                    let Some(unit) = todo.get(first..(first + per_unit).min(todo.len())) else {
                        break;
                    };
                    if unit.is_empty() {
                        break;
                    }
                    if let Err(e) = scan_unit(
                        file,
                        path,
                        unit,
                        &mut buf,
                        cs,
                        &chunk_len,
                        |i, id, new| {
                            *slots[i].lock().expect("not poisoned") = Some(id);
                            new_chunks.fetch_add(u64::from(new), Relaxed);
                        },
                        &mut *writer,
                    ) {
                        fail(e);
                        break;
                    }
                    let bytes: u64 = unit.iter().map(|&i| chunk_len(i) as u64).sum();
                    read.fetch_add(bytes, Relaxed);
                    done.fetch_add(bytes, Relaxed);
                }
                // Every chunk durable under its name before the index can name it.
                if let Err(e) = writer.finish() {
                    fail(e);
                }
                exited.fetch_add(1, std::sync::atomic::Ordering::Release);
            });
        }
        // Progress from this thread, which the caller's closure may need.
        let mut last = u64::MAX;
        loop {
            // Read before the count: once every worker has exited, `done` is final.
            let finished = exited.load(std::sync::atomic::Ordering::Acquire) == threads;
            let now = done.load(Relaxed);
            if now != last {
                progress(now);
                last = now;
            }
            if finished {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    if let Some(e) = failed.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let ids: Vec<Option<ChunkId>> = slots
        .into_iter()
        .map(|s| s.into_inner().expect("not poisoned"))
        .collect();
    let free_chunks = free.iter().filter(|&&f| f).count() as u64;
    let index = Index::build(
        chunk_size,
        total,
        ids.iter().zip(&free).map(|(id, &free)| match (id, free) {
            (_, true) => Chunk::Free,
            (Some(id), false) => Chunk::Data(*id),
            (None, false) => Chunk::Zero,
        }),
    );
    Ok(Imported {
        zero_chunks: count as u64 - free_chunks - index.ids.len() as u64,
        free_chunks,
        index,
        new_chunks: new_chunks.into_inner(),
        bytes_read: read.into_inner(),
        notes,
    })
}

/// Read the chunks `unit` into `buf`, hand those that are not all zeros to `writer`
/// in one call, and tell `stored(chunk, id, new)` of each it kept.
#[allow(clippy::too_many_arguments)]
fn scan_unit(
    file: &File,
    path: &Path,
    unit: &[usize],
    buf: &mut [u8],
    cs: u64,
    chunk_len: &dyn Fn(usize) -> usize,
    mut stored: impl FnMut(usize, ChunkId, bool),
    writer: &mut dyn Writer,
) -> Result<(), Error> {
    let mut kept: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(unit.len());
    let mut at = 0;
    for &i in unit {
        let data = &mut buf[at..at + chunk_len(i)];
        file.read_exact_at(data, i as u64 * cs).map_err(io(path))?;
        if data.iter().any(|&b| b != 0) {
            kept.push((i, at..at + data.len()));
        }
        at += data.len();
    }
    if kept.is_empty() {
        return Ok(());
    }
    let chunks: Vec<&[u8]> = kept.iter().map(|(_, r)| &buf[r.clone()]).collect();
    let ids = writer.put(&chunks)?;
    if ids.len() != kept.len() {
        return Err(Error::Usage(format!(
            "{} chunks stored of {}",
            ids.len(),
            kept.len()
        )));
    }
    for ((i, _), (id, new)) in kept.iter().zip(ids) {
        stored(*i, id, new);
    }
    Ok(())
}

/// The size of a file or a block device (whose metadata says 0).
pub(crate) fn size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// The ranges of `file` (of `len` bytes) that hold data, from `SEEK_DATA` and
/// `SEEK_HOLE`; all of it where the file system or device cannot tell.
fn data_ranges(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(file, pos, libc::SEEK_DATA) {
            Ok(start) => start,
            // No data after pos: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pos == 0 => {
                return Ok(vec![(0, len)]);
            }
            Err(e) => return Err(e),
        };
        let end = seek(file, start, libc::SEEK_HOLE)?.min(len);
        if end <= start {
            break;
        }
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

/// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (the file offset moves, which `pread`
/// and `pwrite` ignore).
#[allow(unsafe_code)]
pub(crate) fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek only reads its integer arguments; the descriptor is open for as
    // long as `file` is borrowed. The reads go by pread, which ignores the offset.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIN_CHUNK_SIZE;
    use std::os::unix::fs::FileExt;

    fn disk(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        // Data in the first and third chunk, zeros in the second, a short tail.
        let cs = MIN_CHUNK_SIZE as usize;
        for (i, b) in bytes[..cs].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        for (i, b) in bytes[2 * cs..].iter_mut().enumerate() {
            *b = (i % 241) as u8 + 1;
        }
        bytes
    }

    #[test]
    fn import_then_reassembly_gives_the_same_bytes_and_zeros_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let bytes = disk(3 * MIN_CHUNK_SIZE as usize + 1000);
        let file = dir.path().join("disk.raw");
        std::fs::write(&file, &bytes).unwrap();
        let mut seen = Vec::new();
        let imported = import(&store, &file, u64::from(MIN_CHUNK_SIZE), |n| seen.push(n)).unwrap();
        assert_eq!(imported.index.layout.count(), 4);
        assert_eq!(imported.zero_chunks, 1);
        assert_eq!(imported.new_chunks, 3);
        assert_eq!(*seen.last().unwrap(), bytes.len() as u64);
        let mut back = Vec::new();
        for (i, entry) in imported.index.chunks().enumerate() {
            let len = imported.index.layout.chunk_len(i as u64);
            match entry {
                Chunk::Zero | Chunk::Free => back.extend(std::iter::repeat_n(0u8, len)),
                Chunk::Data(id) => back.extend(store.get(&id, len).unwrap()),
            }
        }
        assert_eq!(back, bytes);
        // A second import of the same disk writes nothing new.
        let again = import(&store, &file, u64::from(MIN_CHUNK_SIZE), |_| {}).unwrap();
        assert_eq!((again.new_chunks, again.index), (0, imported.index));
    }

    #[test]
    fn a_sparse_file_imports_the_same_index_reading_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let cs = MIN_CHUNK_SIZE as u64;
        let file = dir.path().join("sparse.raw");
        // 64 chunks and a short tail, data in chunks 3 and 40..42 only; the rest holes.
        let f = File::create(&file).unwrap();
        f.set_len(64 * cs + 777).unwrap();
        let noise: Vec<u8> = (0..cs as usize * 2)
            .map(|i| (i * 7 % 253) as u8 + 1)
            .collect();
        f.write_all_at(&noise[..cs as usize], 3 * cs).unwrap();
        f.write_all_at(&noise, 40 * cs).unwrap();
        f.write_all_at(b"tail", 64 * cs + 10).unwrap();
        drop(f);
        let imported = import(&store, &file, cs, |_| {}).unwrap();
        let dense = dir.path().join("dense.raw");
        std::fs::write(&dense, std::fs::read(&file).unwrap()).unwrap();
        let reference = import(&store, &dense, cs, |_| {}).unwrap();
        assert_eq!(
            imported.index, reference.index,
            "same index as the dense copy"
        );
        assert_eq!(imported.index.layout.total_size, 64 * cs + 777);
        let stored: Vec<usize> = imported
            .index
            .chunks()
            .enumerate()
            .filter(|(_, c)| matches!(c, Chunk::Data(_)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(stored, vec![3, 40, 41, 64]);
        // Only what holds data was read (the file system may round data up to its
        // blocks, never to the whole file).
        assert!(
            imported.bytes_read <= 8 * cs,
            "read {} bytes",
            imported.bytes_read
        );
        assert_eq!(reference.bytes_read, 64 * cs + 777);
    }

    #[test]
    fn bad_chunk_size_and_missing_file_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let file = dir.path().join("disk.raw");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            import(&store, &file, 1000, |_| {}),
            Err(Error::BadChunkSize(1000))
        ));
        let err = import(&store, &dir.path().join("nope.raw"), 1 << 20, |_| {}).unwrap_err();
        assert!(err.to_string().contains("nope.raw"), "{err}");
    }
}
