//! Restore a disk to an image in place. The disk is worked through in jobs, in disk
//! order: one thread reads a group of data chunks at a time (so the disk streams),
//! threads on every core hash it, and when the hashes of the group match the index's
//! summary, all of it is in place;
//! otherwise the group's ids are fetched (checked against the summary) and each
//! chunk that differs is fetched, verified against its id and written. A run of
//! zero or free chunks is emptied without being read where the disk can do it
//! (unwritten blocks or a hole in a file; on a block device, a zeroing discard), else
//! read and zeroed where it is not zeros. Killed at any point and run again, it finishes with the same
//! disk, since every decision is made from what is on the disk at that moment.
//! What is written is flushed to the disk every two seconds (or 64 MiB), so a
//! restore cut by a power loss resumes from there, not from scratch.
//!
//! The transport is the caller's ([`Fetch`]): the restore client fetches over HTTP,
//! tests fetch from a local store ([`Local`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Mutex};

use crate::error::io;
use crate::index::{group_hash, RunKind, Summary};
use crate::store::decode_chunk;
use crate::{ChunkId, ChunkStore, Error, Index};

/// Where missing chunks and the ids of groups come from. Fetches run on several
/// threads at once.
pub trait Fetch: Sync {
    /// The compressed bytes of a chunk, as stored.
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

    /// The ids of groups `first..first + count` of the index `index`, unverified
    /// (the restore checks them against the summary).
    fn group_ids(&self, index: &ChunkId, first: u64, count: u64) -> Result<Vec<ChunkId>, Error>;

    /// The chunk `id` is on the disk at `offset` (`len` bytes), verified: found in
    /// place, or fetched, verified and written. A source that shares chunks with
    /// peers ([`crate::peer::Swarm`]) serves it from there.
    fn have(&self, _id: &ChunkId, _offset: u64, _len: usize) {}

    /// The chunk `id` this source sent failed verification; it is fetched again.
    fn rejected(&self, _id: &ChunkId) {}
}

/// Chunks fetched in one request: about 1 MiB of chunk data, at most 16 chunks.
fn batch_len(chunk_size: u32) -> usize {
    ((1usize << 20) / chunk_size as usize).clamp(1, 16)
}

/// A store and an index on this machine as the source of a restore.
pub struct Local<'a> {
    pub store: &'a ChunkStore,
    pub index: &'a Index,
}

impl Fetch for Local<'_> {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        self.store.get_compressed(id)
    }

    fn group_ids(&self, index: &ChunkId, first: u64, count: u64) -> Result<Vec<ChunkId>, Error> {
        if *index != self.index.id() {
            return Err(Error::NoImage(format!("index {index}")));
        }
        self.index
            .group_ids(first, count)
            .map(<[ChunkId]>::to_vec)
            .ok_or_else(|| Error::BadIndex(format!("no group {first}")))
    }
}

/// Written data is flushed at least this often, and after this many bytes: a station
/// that loses power mid-restore keeps what was flushed, and its next restore fetches
/// only the rest.
const SYNC_EVERY_MS: u64 = 2000;
const SYNC_BYTES: u64 = 64 << 20;
/// The largest read of the disk.
const READ_BYTES: u64 = 8 << 20;
/// A run of empty chunks is emptied in pieces of at most this, for progress.
const EMPTY_PIECE: u64 = 1 << 30;
/// Threads hashing what is read at most.
const MAX_HASHERS: usize = 8;

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
    /// Data chunks that were already right on the disk.
    pub chunks_in_place: u64,
    /// Chunks fetched and written.
    pub chunks_fetched: u64,
    /// Zero and free chunks left empty without writing them: unwritten or punched
    /// blocks and zeroing discards (none reads), or read and found zeros.
    pub chunks_emptied: u64,
    /// Zero and free chunks that the disk could not empty by itself: read, and
    /// written with zeros where they were not zeros.
    pub zero_chunks_written: u64,
    /// Compressed bytes fetched.
    pub bytes_fetched: u64,
    /// Bytes read from the disk.
    pub disk_bytes_read: u64,
    /// Bytes of group ids fetched (for the groups of the disk that differ).
    pub index_bytes_fetched: u64,
    /// Fetched chunks that failed verification (and were fetched again).
    pub bad_chunks_refetched: u64,
    /// Chunks the disk could not read (bad sectors), written anew.
    pub unreadable_chunks: u64,
}

#[derive(Default)]
struct Counters {
    in_place: AtomicU64,
    fetched: AtomicU64,
    emptied: AtomicU64,
    zeros: AtomicU64,
    bytes: AtomicU64,
    read: AtomicU64,
    index: AtomicU64,
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
            chunks_emptied: self.emptied.load(Relaxed),
            zero_chunks_written: self.zeros.load(Relaxed),
            bytes_fetched: self.bytes.load(Relaxed),
            disk_bytes_read: self.read.load(Relaxed),
            index_bytes_fetched: self.index.load(Relaxed),
            bad_chunks_refetched: self.refetched.load(Relaxed),
            unreadable_chunks: self.unreadable.load(Relaxed),
        }
    }
}

/// One piece of work of the readers.
enum Job {
    /// Chunks `first..first + chunks`, all zero or free: empty them.
    Empty { first: u64, chunks: u64 },
    /// Group `k` of the data chunks, at these (first chunk, chunks) pieces of the disk.
    Group { k: u64, pieces: Vec<(u64, u64)> },
}

/// The jobs of a restore, in disk order.
fn jobs(summary: &Summary) -> Result<Vec<Job>, Error> {
    let layout = &summary.layout;
    let mut jobs = Vec::new();
    // The group being filled: its number, its pieces so far, and their chunks.
    type Pending = (u64, Vec<(u64, u64)>, u64);
    let mut pending: Option<Pending> = None;
    let mut next_group = 0u64;
    let per_piece = (EMPTY_PIECE / u64::from(layout.chunk_size)).max(1);
    for e in layout.extents() {
        if e.kind != RunKind::Data {
            let mut first = e.first;
            while first < e.first + e.chunks {
                let chunks = per_piece.min(e.first + e.chunks - first);
                jobs.push(Job::Empty { first, chunks });
                first += chunks;
            }
            continue;
        }
        let (mut first, mut left) = (e.first, e.chunks);
        while left > 0 {
            let (k, pieces, filled) = pending.get_or_insert_with(|| (next_group, Vec::new(), 0));
            let (lo, hi) = summary.group_range(*k);
            let take = (hi - lo - *filled).min(left);
            pieces.push((first, take));
            *filled += take;
            first += take;
            left -= take;
            if *filled == hi - lo {
                let (k, pieces, _) = pending.take().expect("just filled");
                jobs.push(Job::Group { k, pieces });
                next_group += 1;
            }
        }
    }
    if pending.is_some() || next_group != summary.group_count() {
        return Err(Error::BadIndex(
            "the groups do not cover the data chunks".into(),
        ));
    }
    Ok(jobs)
}

/// Bring the disk at `disk` to the image of `summary`. The disk (file or block
/// device) must be at least as large as the image; it is never grown or truncated.
///
/// One thread reads the disk, up to one thread per core (at most 8) hashes it;
/// `parallel` threads fetch, verify and write the chunks that differ, so the network
/// and the disk are busy at once. `progress(done_bytes, stats)` is called after each piece
/// of work, from any of them.
pub fn restore(
    summary: &Summary,
    disk: &Path,
    source: &impl Fetch,
    parallel: usize,
    progress: &(dyn Fn(u64, &RestoreStats) + Sync),
) -> Result<RestoreStats, Error> {
    let layout = &summary.layout;
    let file = open_disk(disk)?;
    let size = disk_size(&file, disk)?;
    if size < layout.total_size {
        return Err(Error::DiskTooSmall {
            disk: disk.to_owned(),
            size,
            needed: layout.total_size,
        });
    }
    let index_id = summary.id();
    let jobs = jobs(summary)?;
    let kind = file.metadata().map_err(io(disk))?.file_type();
    let emptier = Emptier {
        file: &file,
        chunk_size: layout.chunk_size,
        regular: kind.is_file(),
        punch: AtomicBool::new(true),
    };
    let total = layout.count();
    let counters = Counters::default();
    let syncer = Syncer::new();
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        stop.store(true, Relaxed);
        failure.lock().expect("not poisoned").get_or_insert(e);
    };
    let done = |len: u64| {
        let d = counters.done_bytes.fetch_add(len, Relaxed) + len;
        progress(d, &counters.snapshot(total));
    };
    let parallel = parallel.max(1);
    let hashers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_HASHERS);
    let batch = batch_len(layout.chunk_size);
    // Deep enough that every fetch thread can take a whole batch while the readers
    // go on hashing.
    let (tx, rx) = mpsc::sync_channel::<(u64, ChunkId, usize)>(parallel * batch * 2);
    let rx = Mutex::new(rx);
    // One thread reads the disk in order, in large reads (sequential for the
    // disk, and the next group announced to the kernel ahead), and empties the
    // empty runs; `hashers` threads hash the groups it read.
    let (full_tx, full_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(hashers);
    let full_rx = Mutex::new(full_rx);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..hashers + 2 {
        free_tx
            .send(vec![0u8; READ_BYTES as usize])
            .expect("receiver alive");
    }
    let ctx = GroupCtx {
        summary,
        index_id: &index_id,
        source,
        counters: &counters,
        done: &done,
    };
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                // Should a worker panic, the readers must not wait on a full channel
                // for ever: stop them, and drain the channel until they give up.
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
                                source.have(&id, offset, len);
                                counters.fetched.fetch_add(1, Relaxed);
                                done(len as u64);
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
        for _ in 0..hashers {
            let (tx, free_tx) = (tx.clone(), free_tx.clone());
            let (ctx, full_rx, jobs, stop) = (&ctx, &full_rx, &jobs, &stop);
            let fail = &fail;
            scope.spawn(move || {
                let _guard = PanicGuard { stop, rx: full_rx };
                loop {
                    let next = full_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((j, buf)) = next else { return };
                    if !stop.load(Relaxed) {
                        if let Job::Group { k, pieces } = &jobs[j] {
                            if let Err(e) = ctx.hash(*k, pieces, &buf, &tx) {
                                fail(e);
                            }
                        }
                    }
                    let _ = free_tx.send(buf);
                }
            });
        }
        scope.spawn(|| {
            let (full_tx, free_tx, free_rx) = (full_tx, free_tx, free_rx);
            // A buffer from the pool; none once the restore stops.
            let take = || loop {
                match free_rx.recv_timeout(std::time::Duration::from_millis(100)) {
                    Ok(buf) => return Some(buf),
                    Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Relaxed) => {}
                    Err(_) => return None,
                }
            };
            for (j, job) in jobs.iter().enumerate() {
                if stop.load(Relaxed) {
                    break;
                }
                let Some(mut buf) = take() else { break };
                let result = match job {
                    Job::Empty { first, chunks } => {
                        let (offset, len) = (layout.offset(*first), layout.bytes(*first, *chunks));
                        let emptied = emptier
                            .empty(offset, len, *chunks, &mut buf, &counters, &syncer)
                            .map(|()| done(len))
                            .map_err(io(disk));
                        let _ = free_tx.send(buf);
                        emptied
                    }
                    Job::Group { pieces, .. } => {
                        if let Some(Job::Group { pieces: next, .. }) = jobs.get(j + 1) {
                            for &(first, chunks) in next {
                                let _ = will_need(
                                    &file,
                                    layout.offset(first),
                                    layout.bytes(first, chunks),
                                );
                            }
                        }
                        read_pieces(&file, layout, pieces, &mut buf, &counters);
                        full_tx
                            .send((j, buf))
                            .map_err(|_| Error::Usage("the hashers stopped".into()))
                    }
                };
                if let Err(e) = result {
                    fail(e);
                    break;
                }
            }
        });
        drop(tx);
    });
    if let Some(e) = failure.into_inner().expect("not poisoned") {
        return Err(e);
    }
    file.sync_all().map_err(io(disk))?;
    Ok(counters.snapshot(total))
}

/// Read the chunks at `pieces` into `buf`, one after the other. An unreadable sector
/// (EIO) makes its chunk read as 0xff, a chunk that differs: writing it lets the
/// drive remap the sector, so one bad sector never blocks a reset.
fn read_pieces(
    file: &File,
    layout: &crate::Layout,
    pieces: &[(u64, u64)],
    buf: &mut [u8],
    counters: &Counters,
) {
    let mut at = 0usize;
    for &(first, chunks) in pieces {
        let (offset, len) = (layout.offset(first), layout.bytes(first, chunks) as usize);
        let here = &mut buf[at..at + len];
        if file.read_exact_at(here, offset).is_err() {
            for c in 0..chunks {
                let o = (layout.offset(first + c) - offset) as usize;
                let piece = &mut here[o..o + layout.chunk_len(first + c)];
                if file.read_exact_at(piece, offset + o as u64).is_err() {
                    counters.unreadable.fetch_add(1, Relaxed);
                    piece.fill(0xff);
                }
            }
        }
        counters.read.fetch_add(len as u64, Relaxed);
        at += len;
    }
}

/// What a hasher needs for a group.
struct GroupCtx<'a, F: Fetch, D: Fn(u64)> {
    summary: &'a Summary,
    index_id: &'a ChunkId,
    source: &'a F,
    counters: &'a Counters,
    done: &'a D,
}

impl<F: Fetch, D: Fn(u64)> GroupCtx<'_, F, D> {
    /// Hash group `k`, read from the disk's `pieces` into `buf`; when it differs from
    /// the summary, fetch its ids and send each chunk that differs to the fetchers.
    fn hash(
        &self,
        k: u64,
        pieces: &[(u64, u64)],
        buf: &[u8],
        tx: &mpsc::SyncSender<(u64, ChunkId, usize)>,
    ) -> Result<(), Error> {
        let layout = &self.summary.layout;
        // (chunk number, id of what the disk holds there)
        let mut local: Vec<(u64, ChunkId)> = Vec::new();
        let mut at = 0usize;
        for &(first, chunks) in pieces {
            for c in first..first + chunks {
                let len = layout.chunk_len(c);
                local.push((c, ChunkId::of(&buf[at..at + len])));
                at += len;
            }
        }
        let local_ids: Vec<ChunkId> = local.iter().map(|l| l.1).collect();
        if group_hash(&local_ids) == self.summary.groups[k as usize] {
            for &(chunk, id) in &local {
                self.source
                    .have(&id, layout.offset(chunk), layout.chunk_len(chunk));
            }
            self.counters
                .in_place
                .fetch_add(local.len() as u64, Relaxed);
            (self.done)(at as u64);
            return Ok(());
        }
        let ids = self.source.group_ids(self.index_id, k, 1)?;
        self.counters
            .index
            .fetch_add(ids.len() as u64 * 32, Relaxed);
        self.summary.check_group_ids(k, &ids).map_err(|e| {
            Error::BadIndex(format!(
                "{e}: the server sent ids that are not the image's; nothing of them was used"
            ))
        })?;
        for ((chunk, here), want) in local.into_iter().zip(ids) {
            let len = layout.chunk_len(chunk);
            if here == want {
                self.source.have(&here, layout.offset(chunk), len);
                self.counters.in_place.fetch_add(1, Relaxed);
                (self.done)(len as u64);
            } else if tx.send((layout.offset(chunk), want, len)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Empties runs of zero and free chunks.
struct Emptier<'a> {
    file: &'a File,
    chunk_size: u32,
    regular: bool,
    /// Whether to try the disk's own zeroing still (off after it said it cannot).
    punch: AtomicBool,
}

impl Emptier<'_> {
    /// Make `len` bytes at `offset` (`chunks` chunks) zeros without writing them: in a
    /// file, its holes left alone and its data blocks marked unwritten
    /// (`fallocate(ZERO_RANGE)`, a change of the extent tree only: freeing the blocks
    /// instead costs more than reading them on a filesystem mounted with `discard`),
    /// else punched out; on a block device a zeroing
    /// discard (`fallocate(PUNCH_HOLE)`: the kernel's write-zeroes with unmap, never
    /// a fallback that writes). Where neither works: trim it (`BLKDISCARD`, best
    /// effort, to give the flash back), read it, and write zeros where it is not zeros.
    fn empty(
        &self,
        offset: u64,
        len: u64,
        chunks: u64,
        buf: &mut [u8],
        counters: &Counters,
        syncer: &Syncer,
    ) -> std::io::Result<()> {
        if self.punch.load(Relaxed) {
            let zeroed = match self.regular {
                true => zero_file_range(self.file, offset, len),
                false => punch_hole(self.file, offset, len),
            };
            match zeroed {
                Ok(()) => {
                    counters.emptied.fetch_add(chunks, Relaxed);
                    return Ok(());
                }
                Err(_) => self.punch.store(false, Relaxed),
            }
        }
        if !self.regular {
            let _ = discard(self.file, offset, len);
        }
        let cs = self.chunk_size as usize;
        let mut at = offset;
        while at < offset + len {
            let n = (buf.len() as u64).min(offset + len - at) as usize;
            let here = &mut buf[..n];
            self.file.read_exact_at(here, at)?;
            counters.read.fetch_add(n as u64, Relaxed);
            for (c, chunk) in here.chunks_mut(cs).enumerate() {
                if !is_zero(chunk) {
                    chunk.fill(0);
                    self.file.write_all_at(chunk, at + (c * cs) as u64)?;
                    syncer.wrote(self.file, chunk.len() as u64)?;
                    counters.zeros.fetch_add(1, Relaxed);
                } else {
                    counters.emptied.fetch_add(1, Relaxed);
                }
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// Tell the kernel the range will be read soon (`POSIX_FADV_WILLNEED`): it starts
/// reading it while the range before it is hashed.
#[allow(unsafe_code)]
fn will_need(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open
    // for as long as `file` is borrowed.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// `BLKDISCARD` (`_IO(0x12, 119)`): tell the device the range is unused.
#[allow(unsafe_code)]
fn discard(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKDISCARD: libc::c_ulong = 0x1277;
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 from the pointer, which points at `range`
    // for the whole call; the descriptor is open for as long as `file` is borrowed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// All zeros? Folding 4 KiB at a time lets the compiler vectorize it.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Make a range of a file read as zeros: its holes stay holes (`ZERO_RANGE` over a
/// hole would allocate it: a sparse terabyte disk file would fill the filesystem),
/// its data is marked unwritten, or punched out where that is not supported.
fn zero_file_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use crate::import::seek;
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let data = match seek(file, pos, libc::SEEK_DATA) {
            Ok(data) => data,
            // No data from pos on.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.min(end);
        zero_range(file, data, hole - data).or_else(|_| punch_hole(file, data, hole - data))?;
        pos = hole;
    }
    Ok(())
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

fn zero_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

#[allow(unsafe_code)]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
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
        source.rejected(id);
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
    use crate::index::Chunk;
    use crate::{import, MIN_CHUNK_SIZE};
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

    fn run(index: &Index, disk: &Path, source: &impl Fetch) -> Result<RestoreStats, Error> {
        restore(&index.summary(), disk, source, 4, &|_, _| {})
    }

    #[test]
    fn blank_disk_is_restored_byte_identical_and_zero_chunks_are_not_fetched() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; image.len() + 4096]).unwrap();
        let local = Local {
            store: &store,
            index: &index,
        };
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!(stats.chunks_fetched, 7);
        assert_eq!(
            stats.chunks_emptied, 1,
            "the zero chunk is emptied, not fetched"
        );
        assert_eq!(stats.index_bytes_fetched, 7 * 32, "one group, 7 ids");
        let back = std::fs::read(&disk).unwrap();
        assert_eq!(&back[..image.len()], &image[..]);
        assert!(
            back[image.len()..].iter().all(|&b| b == 0),
            "bytes past the image are untouched"
        );
    }

    #[test]
    fn delta_restore_fetches_only_changed_chunks_and_an_unchanged_disk_nothing_not_even_ids() {
        let (dir, store, index, image) = setup();
        let local = Local {
            store: &store,
            index: &index,
        };
        let disk = dir.path().join("disk");
        let mut changed = image.clone();
        changed[5] ^= 0xff; // chunk 0
        changed[6 * CS + 17] ^= 0xff; // chunk 6
        changed[3 * CS + 9] = 1; // the zero chunk
        std::fs::write(&disk, &changed).unwrap();
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!(
            (
                stats.chunks_fetched,
                stats.chunks_emptied,
                stats.chunks_in_place
            ),
            (2, 1, 5)
        );
        assert_eq!(std::fs::read(&disk).unwrap(), image);
        let again = run(&index, &disk, &local).unwrap();
        assert_eq!(
            (
                again.chunks_fetched,
                again.bytes_fetched,
                again.index_bytes_fetched,
                again.chunks_in_place
            ),
            (0, 0, 0, 7)
        );
        assert_eq!(
            again.disk_bytes_read,
            image.len() as u64 - CS as u64,
            "the zero chunk is not read"
        );
    }

    #[test]
    fn free_chunks_are_emptied_never_read_and_only_differing_groups_fetch_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        // 300 data chunks, 50 free, 300 data: five groups of ids.
        let data = pattern(600 * CS, 3);
        let mut chunks = Vec::new();
        let mut image = Vec::new();
        for (i, c) in data.chunks(CS).enumerate() {
            if i == 300 {
                chunks.extend((0..50).map(|_| Chunk::Free));
                image.resize(image.len() + 50 * CS, 0);
            }
            chunks.push(Chunk::Data(store.put(c).unwrap().0));
            image.extend_from_slice(c);
        }
        let index = Index::build(MIN_CHUNK_SIZE, image.len() as u64, chunks);
        assert_eq!(index.summary().group_count(), 5);
        let local = Local {
            store: &store,
            index: &index,
        };
        // The disk: the image, a student's files in the free space, one chunk changed
        // in group 3 (data chunk 400 is disk chunk 450).
        let mut disk_bytes = image.clone();
        disk_bytes[300 * CS..350 * CS].fill(0x5a);
        disk_bytes[450 * CS + 1] ^= 1;
        let disk = dir.path().join("disk");
        std::fs::write(&disk, &disk_bytes).unwrap();
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!(std::fs::read(&disk).unwrap(), image, "free space emptied");
        assert_eq!((stats.chunks_fetched, stats.chunks_emptied), (1, 50));
        assert_eq!(
            stats.index_bytes_fetched,
            128 * 32,
            "the ids of group 3 only"
        );
        assert_eq!(
            stats.disk_bytes_read,
            600 * CS as u64,
            "free space is not read"
        );
    }

    #[test]
    fn many_runs_of_free_and_data_chunks_are_worked_through_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = pattern(40 * CS, 9);
        let (mut chunks, mut image) = (Vec::new(), Vec::new());
        for (i, c) in data.chunks(CS).enumerate() {
            // Runs: 2 data, 1 free, 2 data, 1 free, ...: 20 empty jobs.
            chunks.push(Chunk::Data(store.put(c).unwrap().0));
            image.extend_from_slice(c);
            if i % 2 == 1 {
                chunks.push(Chunk::Free);
                image.resize(image.len() + CS, 0);
            }
        }
        let index = Index::build(MIN_CHUNK_SIZE, image.len() as u64, chunks);
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0x33u8; image.len()]).unwrap();
        let local = Local {
            store: &store,
            index: &index,
        };
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!((stats.chunks_fetched, stats.chunks_emptied), (40, 20));
        assert_eq!(std::fs::read(&disk).unwrap(), image);
    }

    #[test]
    fn emptying_free_space_of_a_sparse_disk_file_allocates_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = pattern(CS, 4);
        // One data chunk, then 256 MiB of free space.
        let free = (256u64 << 20) / CS as u64;
        let chunks = std::iter::once(Chunk::Data(store.put(&data).unwrap().0))
            .chain((0..free).map(|_| Chunk::Free));
        let index = Index::build(MIN_CHUNK_SIZE, (free + 1) * CS as u64, chunks);
        let disk = dir.path().join("disk");
        let f = File::create(&disk).unwrap();
        f.set_len((free + 1) * CS as u64).unwrap();
        // A student's file in the middle of the free space.
        f.write_all_at(&pattern(4 * CS, 8), 2000 * CS as u64)
            .unwrap();
        drop(f);
        let local = Local {
            store: &store,
            index: &index,
        };
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!(stats.chunks_emptied, free);
        let back = std::fs::read(&disk).unwrap();
        assert_eq!(&back[..CS], &data[..]);
        assert!(is_zero(&back[CS..]), "the free space reads as zeros");
        let allocated = std::fs::metadata(&disk).unwrap().blocks() * 512;
        assert!(allocated <= 8 * CS as u64, "{allocated} bytes allocated");
    }

    #[test]
    fn an_image_of_large_chunks_restores_in_groups_that_fit_the_read_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let image = pattern((20 << 20) - 4096, 5);
        let raw = dir.path().join("image.raw");
        std::fs::write(&raw, &image).unwrap();
        let index = import(&store, &raw, 1 << 20, |_| {}).unwrap().index;
        let disk = dir.path().join("disk");
        let mut old = image.clone();
        old[13 << 20] ^= 1;
        std::fs::write(&disk, &old).unwrap();
        let local = Local {
            store: &store,
            index: &index,
        };
        let stats = run(&index, &disk, &local).unwrap();
        assert_eq!((stats.chunks_fetched, stats.chunks_in_place), (1, 19));
        assert_eq!(stats.index_bytes_fetched, 8 * 32, "group 1: chunks 8 to 15");
        assert_eq!(std::fs::read(&disk).unwrap(), image);
    }

    /// A source that corrupts the first `bad` fetches.
    struct Flaky<'a> {
        local: Local<'a>,
        bad: AtomicU32,
    }

    impl Fetch for Flaky<'_> {
        fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
            let mut bytes = self.local.fetch(id)?;
            let bad = self
                .bad
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            if bad.is_ok() {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x55;
            }
            Ok(bytes)
        }
        fn group_ids(
            &self,
            index: &ChunkId,
            first: u64,
            count: u64,
        ) -> Result<Vec<ChunkId>, Error> {
            self.local.group_ids(index, first, count)
        }
    }

    #[test]
    fn a_corrupt_chunk_is_fetched_again_and_never_written() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        let once = Flaky {
            local: Local {
                store: &store,
                index: &index,
            },
            bad: AtomicU32::new(1),
        };
        let stats = run(&index, &disk, &once).unwrap();
        assert_eq!(stats.bad_chunks_refetched, 1);
        assert_eq!(std::fs::read(&disk).unwrap(), image);

        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        let always = Flaky {
            local: Local {
                store: &store,
                index: &index,
            },
            bad: AtomicU32::new(u32::MAX),
        };
        let err = run(&index, &disk, &always).unwrap_err();
        assert!(matches!(err, Error::CorruptChunk { .. }), "{err}");
        assert!(
            std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
            "nothing unverified was written"
        );
    }

    #[test]
    fn ids_that_do_not_match_the_summary_are_refused_and_nothing_is_written() {
        let (dir, store, index, image) = setup();
        // Another image's ids under this index's id.
        let mut other = index.clone();
        other.ids.swap(0, 1);
        struct Lying<'a>(Local<'a>, Vec<ChunkId>);
        impl Fetch for Lying<'_> {
            fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
                self.0.fetch(id)
            }
            fn group_ids(&self, _: &ChunkId, _: u64, _: u64) -> Result<Vec<ChunkId>, Error> {
                Ok(self.1.clone())
            }
        }
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        let lying = Lying(
            Local {
                store: &store,
                index: &index,
            },
            other.ids.clone(),
        );
        let err = run(&index, &disk, &lying).unwrap_err().to_string();
        assert!(err.contains("not the image's"), "{err}");
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn an_interrupted_restore_run_again_finishes_with_the_same_disk() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, pattern(image.len(), 99)).unwrap();
        // Stop after 3 chunks by failing the 4th fetch.
        struct StopAfter<'a>(Local<'a>, AtomicU32);
        impl Fetch for StopAfter<'_> {
            fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
                if self
                    .1
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    return Err(Error::MissingChunk { id: *id });
                }
                self.0.fetch(id)
            }
            fn group_ids(
                &self,
                index: &ChunkId,
                first: u64,
                count: u64,
            ) -> Result<Vec<ChunkId>, Error> {
                self.0.group_ids(index, first, count)
            }
        }
        // One fetch thread, so "after 3 chunks" is well defined.
        let stop = StopAfter(
            Local {
                store: &store,
                index: &index,
            },
            AtomicU32::new(3),
        );
        assert!(restore(&index.summary(), &disk, &stop, 1, &|_, _| {}).is_err());
        let local = Local {
            store: &store,
            index: &index,
        };
        let stats = run(&index, &disk, &local).unwrap();
        // The first run wrote chunks 0-2 before chunk 4 failed.
        assert_eq!(stats.chunks_in_place, 3, "the first run's chunks are kept");
        assert_eq!(stats.chunks_fetched, 4);
        assert_eq!(std::fs::read(&disk).unwrap(), image);
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused_untouched() {
        let (dir, store, index, image) = setup();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![9u8; image.len() - 1]).unwrap();
        let local = Local {
            store: &store,
            index: &index,
        };
        let err = run(&index, &disk, &local).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 9));
    }
}
