//! Restore a disk to an image in place: read each chunk of the disk, keep it when it
//! already matches the index, otherwise fetch the chunk, verify it against its id and
//! write it. Zero chunks are written as zeros. Killed at any point and run again, it
//! finishes with the same disk, since every decision is made from what is on the
//! disk at that moment. What is written is flushed to the disk every two seconds
//! (or 64 MiB), so a restore cut by a power loss resumes from there, not from scratch.
//!
//! The transport is the caller's ([`Fetch`]): the restore client fetches over HTTP,
//! tests fetch from a local store.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Mutex};

use crate::error::io;
use crate::store::decode_chunk;
use crate::{ChunkId, Error, Index};

/// Where missing chunks come from: the compressed bytes of a chunk, as stored.
/// Fetches run on several threads at once.
pub trait Fetch: Sync {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error>;

    /// Several chunks at once, in order (one request instead of many, for small
    /// chunks): one result per id, unverified like [`Fetch::fetch`]. The default
    /// fetches them one by one and stops at the first failure.
    fn fetch_many(&self, ids: &[ChunkId]) -> Vec<Result<Vec<u8>, Error>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let got = self.fetch(id);
            let failed = got.is_err();
            out.push(got);
            if failed {
                break;
            }
        }
        out
    }
}

/// Chunks fetched in one request: about 1 MiB of chunk data, at most 16 chunks.
fn batch_len(chunk_size: u32) -> usize {
    ((1usize << 20) / chunk_size as usize).clamp(1, 16)
}

impl Fetch for crate::ChunkStore {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        self.get_compressed(id)
    }
}

/// Written data is flushed at least this often, and after this many bytes: a station
/// that loses power mid-restore keeps what was flushed, and its next restore fetches
/// only the rest.
const SYNC_EVERY_MS: u64 = 2000;
const SYNC_BYTES: u64 = 64 << 20;

/// Flushes the disk every [`SYNC_EVERY_MS`] or [`SYNC_BYTES`], whichever comes first,
/// from whichever thread wrote last.
struct Syncer {
    start: std::time::Instant,
    last_ms: AtomicU64,
    unsynced: AtomicU64,
}

impl Syncer {
    fn new() -> Syncer {
        Syncer {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
        }
    }

    /// `len` bytes were written to `file`: flush when it is time.
    fn wrote(&self, file: &File, len: u64) -> std::io::Result<()> {
        let unsynced = self.unsynced.fetch_add(len, Relaxed) + len;
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Relaxed);
        if (unsynced >= SYNC_BYTES || now.saturating_sub(last) >= SYNC_EVERY_MS)
            && self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.unsynced.store(0, Relaxed);
            file.sync_data()?;
        }
        Ok(())
    }
}

/// How many times a chunk that fails verification is fetched again before the restore
/// gives up.
const REFETCHES: u32 = 1;

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreStats {
    pub chunks_total: u64,
    /// Chunks that were already right on the disk.
    pub chunks_in_place: u64,
    /// Chunks fetched and written.
    pub chunks_fetched: u64,
    /// Zero chunks written (the disk had something else there).
    pub zero_chunks_written: u64,
    /// Compressed bytes fetched.
    pub bytes_fetched: u64,
    /// Fetched chunks that failed verification (and were fetched again).
    pub bad_chunks_refetched: u64,
    /// Chunks the disk could not read (bad sectors), written anew.
    pub unreadable_chunks: u64,
}

#[derive(Default)]
struct Counters {
    in_place: AtomicU64,
    fetched: AtomicU64,
    zeros: AtomicU64,
    bytes: AtomicU64,
    refetched: AtomicU64,
    unreadable: AtomicU64,
    done_bytes: AtomicU64,
}

/// Set `stop` and drain the channel when a worker thread unwinds.
struct PanicGuard<'a, T> {
    stop: &'a AtomicBool,
    rx: &'a Mutex<mpsc::Receiver<T>>,
}

impl<T> Drop for PanicGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.stop.store(true, Relaxed);
            let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
            while rx.recv().is_ok() {}
        }
    }
}

impl Counters {
    fn snapshot(&self, total: u64) -> RestoreStats {
        RestoreStats {
            chunks_total: total,
            chunks_in_place: self.in_place.load(Relaxed),
            chunks_fetched: self.fetched.load(Relaxed),
            zero_chunks_written: self.zeros.load(Relaxed),
            bytes_fetched: self.bytes.load(Relaxed),
            bad_chunks_refetched: self.refetched.load(Relaxed),
            unreadable_chunks: self.unreadable.load(Relaxed),
        }
    }
}

/// Bring the disk at `disk` to `index`. The disk (file or block device) must be at
/// least as large as the image; it is never grown or truncated.
///
/// One thread reads and hashes the disk in order; `parallel` threads fetch, verify
/// and write the chunks that differ, so the network and the disk are busy at once.
/// `progress(done_bytes, stats)` is called after each chunk, from any of them.
pub fn restore(
    index: &Index,
    disk: &Path,
    source: &impl Fetch,
    parallel: usize,
    progress: &(dyn Fn(u64, &RestoreStats) + Sync),
) -> Result<RestoreStats, Error> {
    let file = open_disk(disk)?;
    let size = disk_size(&file, disk)?;
    if size < index.total_size {
        return Err(Error::DiskTooSmall {
            disk: disk.to_owned(),
            size,
            needed: index.total_size,
        });
    }
    let punch = file.metadata().map_err(io(disk))?.file_type().is_file();
    let total = index.chunks.len() as u64;
    let counters = Counters::default();
    let syncer = Syncer::new();
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        stop.store(true, Relaxed);
        failure.lock().expect("not poisoned").get_or_insert(e);
    };
    let done = |len: usize| {
        let d = counters.done_bytes.fetch_add(len as u64, Relaxed) + len as u64;
        progress(d, &counters.snapshot(total));
    };
    let parallel = parallel.max(1);
    let batch = batch_len(index.chunk_size);
    // Deep enough that every fetch thread can take a whole batch while the reader
    // goes on hashing.
    let (tx, rx) = mpsc::sync_channel::<(u64, ChunkId, usize)>(parallel * batch * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                // Should a worker panic, the reader must not wait on a full channel
                // for ever: stop it, and drain the channel until it gives up.
                let _guard = PanicGuard {
                    stop: &stop,
                    rx: &rx,
                };
                loop {
                    // One job, then as many more as are queued, up to a batch.
                    let jobs = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        let Ok(first) = rx.recv() else { return };
                        let mut jobs = vec![first];
                        while jobs.len() < batch {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    if stop.load(Relaxed) {
                        continue;
                    }
                    let ids: Vec<ChunkId> = jobs.iter().map(|j| j.1).collect();
                    let mut bodies = source.fetch_many(&ids).into_iter();
                    for (offset, id, len) in jobs {
                        let body = bodies.next().unwrap_or_else(|| {
                            Err(Error::Fetch {
                                url: "chunk batch".into(),
                                why: format!("no answer for chunk {id}"),
                            })
                        });
                        let written = body
                            .and_then(|compressed| {
                                verified(source, &id, len, compressed, &counters)
                            })
                            .and_then(|data| {
                                file.write_all_at(&data, offset)
                                    .and_then(|()| syncer.wrote(&file, data.len() as u64))
                                    .map_err(io(disk))
                            });
                        match written {
                            Ok(()) => {
                                counters.fetched.fetch_add(1, Relaxed);
                                done(len);
                            }
                            Err(e) => {
                                fail(e);
                                break;
                            }
                        }
                    }
                }
            });
        }
        let mut local = vec![0u8; index.chunk_size as usize];
        for (i, entry) in index.chunks.iter().enumerate() {
            if stop.load(Relaxed) {
                break;
            }
            let len = index.chunk_len(i);
            let offset = i as u64 * u64::from(index.chunk_size);
            let here = &mut local[..len];
            if file.read_exact_at(here, offset).is_err() {
                // An unreadable sector (EIO) is a chunk that differs: writing it lets
                // the drive remap the sector, so one bad sector never blocks a reset.
                counters.unreadable.fetch_add(1, Relaxed);
                here.fill(0xff);
            }
            match entry {
                None if is_zero(here) => counters.in_place.fetch_add(1, Relaxed),
                None => match zero_range(&file, punch, offset, here)
                    .and_then(|()| syncer.wrote(&file, len as u64))
                {
                    Ok(()) => counters.zeros.fetch_add(1, Relaxed),
                    Err(e) => {
                        fail(io(disk)(e));
                        break;
                    }
                },
                Some(id) if ChunkId::of(here) == *id => counters.in_place.fetch_add(1, Relaxed),
                Some(id) => {
                    if tx.send((offset, *id, len)).is_err() {
                        break;
                    }
                    continue;
                }
            };
            done(len);
        }
        drop(tx);
    });
    if let Some(e) = failure.into_inner().expect("not poisoned") {
        return Err(e);
    }
    file.sync_all().map_err(io(disk))?;
    Ok(counters.snapshot(total))
}

/// All zeros? Folding 4 KiB at a time lets the compiler vectorize it.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Make `here.len()` bytes at `offset` zeros: a hole in a regular file (no blocks
/// used, reads return zeros), written zeros on a block device.
fn zero_range(file: &File, punch: bool, offset: u64, here: &mut [u8]) -> std::io::Result<()> {
    if punch && punch_hole(file, offset, here.len() as u64).is_ok() {
        return Ok(());
    }
    here.fill(0);
    file.write_all_at(here, offset)
}

#[allow(unsafe_code)]
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Verify a fetched chunk; a bad one is fetched again (alone), then the restore
/// fails. Unverified data is never returned, so it is never written.
fn verified(
    source: &impl Fetch,
    id: &ChunkId,
    len: usize,
    mut compressed: Vec<u8>,
    counters: &Counters,
) -> Result<Vec<u8>, Error> {
    let mut attempt = 0;
    loop {
        counters.bytes.fetch_add(compressed.len() as u64, Relaxed);
        let why = match decode_chunk(id, &compressed, len) {
            Ok(data) if data.len() == len => return Ok(data),
            Ok(data) => format!("{} bytes, expected {len}", data.len()),
            Err(e) => e.to_string(),
        };
        attempt += 1;
        if attempt > REFETCHES {
            return Err(Error::CorruptChunk {
                id: *id,
                why: format!(
                    "fetched {attempt} times, bad every time ({why}); nothing of it was written. \
                     On the server, `netreset image verify` finds damaged chunks"
                ),
            });
        }
        counters.refetched.fetch_add(1, Relaxed);
        compressed = source.fetch(id)?;
    }
}

/// Open the disk for the restore. A block device is opened exclusively: the kernel
/// refuses while one of its partitions is mounted, so nothing is written under a
/// mounted filesystem.
fn open_disk(disk: &Path) -> Result<File, Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let block = std::fs::metadata(disk)
        .map_err(io(disk))?
        .file_type()
        .is_block_device();
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true);
    if block {
        opts.custom_flags(libc::O_EXCL);
    }
    opts.open(disk).map_err(|e| {
        if block && e.raw_os_error() == Some(libc::EBUSY) {
            Error::Usage(format!(
                "{} is in use (a partition mounted, or swap): unmount it first",
                disk.display()
            ))
        } else {
            io(disk)(e)
        }
    })
}

/// The size of a file or block device.
fn disk_size(file: &File, path: &Path) -> Result<u64, Error> {
    use std::io::{Seek, SeekFrom};
    // metadata().len() is 0 for block devices; seeking to the end works for both.
    let mut handle = file.try_clone().map_err(io(path))?;
    handle.seek(SeekFrom::End(0)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{import, ChunkStore, MIN_CHUNK_SIZE};
    use std::sync::atomic::AtomicU32;

    const CS: usize = MIN_CHUNK_SIZE as usize;

    use crate::sample::noise as pattern;

    /// An image of 8 chunks, chunk 3 all zeros, a short last chunk.
    fn setup() -> (tempfile::TempDir, ChunkStore, Index, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let mut image = pattern(8 * CS - 1000, 7);
        image[3 * CS..4 * CS].fill(0);
        let raw = dir.path().join("image.raw");
        std::fs::write(&raw, &image).unwrap();
        let index = import(&store, &raw, MIN_CHUNK_SIZE as u64, |_| {})
            .unwrap()
            .index;
        (dir, store, index, image)
    }

    #[test]
    fn blank_disk_is_restored_byte_identical_and_zero_chunks_are_not_fetched() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; image.len() + 4096]).unwrap();
        let stats = restore(&index, &disk, &store, 4, &|_, _| {}).unwrap();
        assert_eq!(stats.chunks_fetched, 7);
        assert_eq!(stats.chunks_in_place, 1, "the zero chunk was already zeros");
        let back = std::fs::read(&disk).unwrap();
        assert_eq!(&back[..image.len()], &image[..]);
        assert!(
            back[image.len()..].iter().all(|&b| b == 0),
            "bytes past the image are untouched"
        );
    }

    #[test]
    fn delta_restore_fetches_only_changed_chunks_and_an_unchanged_disk_nothing() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        let mut changed = image.clone();
        changed[5] ^= 0xff; // chunk 0
        changed[6 * CS + 17] ^= 0xff; // chunk 6
        changed[3 * CS + 9] = 1; // the zero chunk
        std::fs::write(&disk, &changed).unwrap();
        let stats = restore(&index, &disk, &store, 4, &|_, _| {}).unwrap();
        assert_eq!(
            (
                stats.chunks_fetched,
                stats.zero_chunks_written,
                stats.chunks_in_place
            ),
            (2, 1, 5)
        );
        assert_eq!(std::fs::read(&disk).unwrap(), image);
        let again = restore(&index, &disk, &store, 4, &|_, _| {}).unwrap();
        assert_eq!(
            (
                again.chunks_fetched,
                again.bytes_fetched,
                again.chunks_in_place
            ),
            (0, 0, 8)
        );
    }

    /// A source that corrupts the first `bad` fetches.
    struct Flaky<'a> {
        store: &'a ChunkStore,
        bad: AtomicU32,
    }

    impl Fetch for Flaky<'_> {
        fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
            let mut bytes = self.store.get_compressed(id)?;
            let bad = self
                .bad
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            if bad.is_ok() {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x55;
            }
            Ok(bytes)
        }
    }

    #[test]
    fn a_corrupt_chunk_is_fetched_again_and_never_written() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        let once = Flaky {
            store: &store,
            bad: AtomicU32::new(1),
        };
        let stats = restore(&index, &disk, &once, 4, &|_, _| {}).unwrap();
        assert_eq!(stats.bad_chunks_refetched, 1);
        assert_eq!(std::fs::read(&disk).unwrap(), image);

        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        let always = Flaky {
            store: &store,
            bad: AtomicU32::new(u32::MAX),
        };
        let err = restore(&index, &disk, &always, 4, &|_, _| {}).unwrap_err();
        assert!(matches!(err, Error::CorruptChunk { .. }), "{err}");
        assert!(
            std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
            "nothing unverified was written"
        );
    }

    #[test]
    fn an_interrupted_restore_run_again_finishes_with_the_same_disk() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, pattern(image.len(), 99)).unwrap();
        // Stop after 3 chunks by failing the 4th fetch.
        struct StopAfter<'a>(&'a ChunkStore, AtomicU32);
        impl Fetch for StopAfter<'_> {
            fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
                if self
                    .1
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    return Err(Error::MissingChunk { id: *id });
                }
                self.0.get_compressed(id)
            }
        }
        // One fetch thread, so "after 3 chunks" is well defined.
        let stop = StopAfter(&store, AtomicU32::new(3));
        assert!(restore(&index, &disk, &stop, 1, &|_, _| {}).is_err());
        let stats = restore(&index, &disk, &store, 4, &|_, _| {}).unwrap();
        // The first run wrote chunks 0-2 and the zero chunk 3 before chunk 4 failed.
        assert_eq!(stats.chunks_in_place, 4, "the first run's chunks are kept");
        assert_eq!(stats.chunks_fetched, 4);
        assert_eq!(std::fs::read(&disk).unwrap(), image);
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused_untouched() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![9u8; image.len() - 1]).unwrap();
        let err = restore(&index, &disk, &store, 4, &|_, _| {}).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 9));
    }
}
