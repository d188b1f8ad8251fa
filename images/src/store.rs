//! The chunk store and the image catalog on local disk, under one directory:
//!
//! ```text
//! chunks/ab/abcdef…      zstd-compressed chunk, named by the BLAKE3 of its bytes
//! images/NAME.idx        an image's index (its id is the hash of its summary)
//! staged/ID.stg          a staged image (index + injection set), named by its hash
//! ```
//! Every file is written to a temporary name in its final directory, made durable and
//! renamed, so a crash never leaves a chunk whose content does not match its name, nor
//! a half-written index. [`ChunkStore::gc`] removes leftovers of such a crash. An
//! import writes its chunks in a [`Batch`]: many temporary files, one `syncfs`, then
//! the renames and a second `syncfs`, instead of two fsyncs per chunk.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::io;
use crate::{ChunkId, Error, Index, Staged};

/// Prefix of files being written.
const TEMP_PREFIX: &str = ".tmp-";
/// zstd level: 3 is zstd's default, fast to compress at import and to decompress.
const ZSTD_LEVEL: i32 = 3;

/// Content-addressed chunks on disk.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
}

/// What [`ChunkStore::gc`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub temp_files_removed: u64,
}

impl ChunkStore {
    /// Open (or create) the store in `dir/chunks`.
    pub fn open(dir: &Path) -> Result<ChunkStore, Error> {
        let dir = dir.join("chunks");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(ChunkStore { dir })
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether chunk `id` is stored.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// Store `data` (not all zeros: those are never stored). Returns its id and whether
    /// it was new.
    pub fn put(&self, data: &[u8]) -> Result<(ChunkId, bool), Error> {
        let id = ChunkId::of(data);
        let path = self.path(&id);
        if path.is_file() {
            return Ok((id, false));
        }
        let compressed = zstd::bulk::compress(data, ZSTD_LEVEL).map_err(io(&path))?;
        self.write_atomic(&path, &compressed)?;
        Ok((id, true))
    }

    /// The compressed bytes of chunk `id`, as stored (served to restore clients).
    pub fn get_compressed(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let path = self.path(id);
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingChunk { id: *id },
            _ => Error::Io { path, source: e },
        })
    }

    /// The bytes of chunk `id`, decompressed and checked against the id.
    pub fn get(&self, id: &ChunkId, max_len: usize) -> Result<Vec<u8>, Error> {
        decode_chunk(id, &self.get_compressed(id)?, max_len)
    }

    /// Remove every chunk not in `keep`, and temporary files of interrupted writes.
    pub fn gc(&self, keep: &HashSet<ChunkId>) -> Result<GcStats, Error> {
        let mut stats = GcStats::default();
        for shard in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let shard = shard.map_err(io(&self.dir))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(io(&shard))? {
                let path = entry.map_err(io(&shard))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if name.starts_with(TEMP_PREFIX) {
                    fs::remove_file(&path).map_err(io(&path))?;
                    stats.temp_files_removed += 1;
                } else if name
                    .parse::<ChunkId>()
                    .map(|id| !keep.contains(&id))
                    .unwrap_or(false)
                {
                    fs::remove_file(&path).map_err(io(&path))?;
                    stats.chunks_removed += 1;
                    stats.bytes_freed += len;
                }
            }
        }
        Ok(stats)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        write_atomic(path, bytes)
    }

    /// A batch of chunk writes, made durable together by [`Batch::commit`].
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            pending: Vec::new(),
        }
    }
}

/// Chunks written to temporary files, not yet under their names: [`Batch::commit`]
/// makes their contents durable with one `syncfs`, renames them, and makes the names
/// durable with another. A batch dropped without a commit leaves temporary files,
/// which `gc` removes; no chunk's name ever points at content that may be torn.
pub struct Batch<'s> {
    store: &'s ChunkStore,
    pending: Vec<(PathBuf, PathBuf)>,
}

/// Chunks a batch holds before it commits by itself.
const BATCH_CHUNKS: usize = 1024;

impl Batch<'_> {
    /// Like [`ChunkStore::put`], durable at the next [`Batch::commit`].
    pub fn put(&mut self, data: &[u8]) -> Result<(ChunkId, bool), Error> {
        let id = ChunkId::of(data);
        if self.holds(&id) {
            return Ok((id, false));
        }
        let compressed =
            zstd::bulk::compress(data, ZSTD_LEVEL).map_err(io(self.store.path(&id)))?;
        Ok((id, self.put_checked(&id, &compressed)?))
    }

    /// Whether chunk `id` is stored or pending in this batch.
    fn holds(&self, id: &ChunkId) -> bool {
        let path = self.store.path(id);
        path.is_file() || self.pending.iter().any(|(_, p)| *p == path)
    }

    /// Store `compressed` as chunk `id` as it is (the caller has checked it with
    /// [`decode_chunk`]), durable at the next [`Batch::commit`]; whether it was new.
    pub fn put_checked(&mut self, id: &ChunkId, compressed: &[u8]) -> Result<bool, Error> {
        if self.holds(id) {
            return Ok(false);
        }
        let path = self.store.path(id);
        let temp = write_temp(&path, compressed)?;
        self.pending.push((temp, path));
        if self.pending.len() >= BATCH_CHUNKS {
            self.commit()?;
        }
        Ok(true)
    }

    /// Make every chunk put so far durable under its name.
    pub fn commit(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let dir = &self.store.dir;
        sync_fs(dir).map_err(io(dir))?;
        for (temp, path) in self.pending.drain(..) {
            fs::rename(&temp, &path).map_err(io(&path))?;
        }
        sync_fs(dir).map_err(io(dir))
    }
}

/// `syncfs(2)` of the file system holding `dir`: everything written there is durable.
#[allow(unsafe_code)]
fn sync_fs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which is open while `d` lives.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Decompress a stored chunk and check it: at most `max_len` bytes, and its hash must
/// be its id. Unverified data never leaves this function.
pub fn decode_chunk(id: &ChunkId, compressed: &[u8], max_len: usize) -> Result<Vec<u8>, Error> {
    let data = zstd::bulk::decompress(compressed, max_len).map_err(|e| Error::CorruptChunk {
        id: *id,
        why: format!("cannot decompress: {e}"),
    })?;
    if ChunkId::of(&data) != *id {
        return Err(Error::CorruptChunk {
            id: *id,
            why: "content does not match its id".into(),
        });
    }
    Ok(data)
}

/// Write `bytes` to `path` through a temporary file, fsync it, rename it into place and
/// fsync the directory.
/// Temporary names are unique in the process (a sequence) and across processes (the pid),
/// so concurrent writers never share one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let temp = write_temp(path, bytes)?;
    let dir = path.parent().expect("store paths have a parent");
    fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io(&temp))?;
    fs::rename(&temp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Write `bytes` to a new temporary file beside `path` (not synced); its name.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!("{TEMP_PREFIX}{}-{seq}", std::process::id()));
    let mut file = fs::File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    Ok(temp)
}

/// The catalog of imported images, `dir/images/NAME.idx`, and of the images staged
/// from them, `dir/staged/ID.stg`.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    staged: PathBuf,
    /// Indexes read lately, most recent first.
    cache: Mutex<Vec<Cached>>,
}

#[derive(Clone, Debug)]
struct Cached {
    id: ChunkId,
    name: String,
    /// The file it was read from (inode, size, modification time): another process
    /// (`netreset image rm` and `import` while the daemon runs) may have replaced it.
    file: (u64, u64, i64, i64),
    index: Arc<Index>,
    /// The summary's encoding, as stations fetch it (its hash is `id`).
    summary: Arc<Vec<u8>>,
}

fn identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Indexes kept in memory (an index of a disk with 40 GiB of data is 21 MB).
const CACHED_INDEXES: usize = 4;

impl Images {
    /// Open (or create) the catalog in `dir/images` and `dir/staged`.
    pub fn open(dir: &Path) -> Result<Images, Error> {
        let staged = dir.join("staged");
        let dir = dir.join("images");
        for d in [&dir, &staged] {
            fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(Images {
            dir,
            staged,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// A directory on the same filesystem as the store, for scratch files of imports.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Keep a staged image; returns its id. Staging the same thing twice is free.
    pub fn put_staged(&self, staged: &Staged) -> Result<ChunkId, Error> {
        let bytes = staged.encode();
        let id = ChunkId::of(&bytes);
        let path = self.staged.join(format!("{id}.stg"));
        // Staging the same thing twice is free; a file that is there but damaged is
        // written again.
        if fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            write_atomic(&path, &bytes)?;
        }
        Ok(id)
    }

    /// The encoding of staged image `id`, as stations fetch it.
    pub fn staged_bytes(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let path = self.staged.join(format!("{id}.stg"));
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoImage(format!("staged {id}")),
            _ => Error::Io { path, source: e },
        })
    }

    /// Remove the staged images of base image `name`; returns how many.
    fn remove_staged_of(&self, name: &str) -> Result<u64, Error> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.staged)
            .map_err(io(&self.staged))?
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "stg") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            // A staged file that no longer decodes is of no use to anyone either.
            let of_name = Staged::decode(&bytes, None).map_or(true, |s| s.base == name);
            if of_name {
                fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn path(&self, name: &str) -> Result<PathBuf, Error> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.idx")))
    }

    /// Save a new image's index; an existing name is refused.
    pub fn add(&self, name: &str, index: &Index) -> Result<(), Error> {
        let path = self.path(name)?;
        if path.exists() {
            return Err(Error::ImageExists(name.to_owned()));
        }
        write_atomic(&path, &index.encode())
    }

    /// An image's index.
    pub fn get(&self, name: &str) -> Result<Index, Error> {
        let path = self.path(name)?;
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoImage(name.to_owned()),
            _ => Error::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        Index::decode(&bytes).map_err(|e| Error::BadIndex(format!("image {name:?}: {e}")))
    }

    /// An image's index and its id, from memory when it was read lately (an image
    /// never changes under its name: it is only added and removed).
    pub fn get_shared(&self, name: &str) -> Result<(ChunkId, Arc<Index>), Error> {
        let path = self.path(name)?;
        let file = identity(&path);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let at = cache
                .iter()
                .position(|c| c.name == name && Some(c.file) == file);
            if let Some(at) = at {
                let entry = cache.remove(at);
                cache.insert(0, entry.clone());
                return Ok((entry.id, entry.index));
            }
        }
        let index = Arc::new(self.get(name)?);
        let summary = Arc::new(index.summary().encode());
        let id = ChunkId::of(&summary);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|c| c.name != name);
        if let Some(file) = file {
            cache.insert(
                0,
                Cached {
                    id,
                    name: name.to_owned(),
                    file,
                    index: index.clone(),
                    summary,
                },
            );
            cache.truncate(CACHED_INDEXES);
        }
        Ok((id, index))
    }

    /// The encoded summary of the index `id`, computed once per index read.
    pub fn summary_by_id(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>, Error> {
        let (name, _) = self.by_id(id)?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.iter().find(|c| c.id == *id && c.name == name) {
            Some(c) => Ok(c.summary.clone()),
            None => Ok(Arc::new(self.get(&name)?.summary().encode())),
        }
    }

    /// The index whose id is `id`, and the image's name.
    pub fn by_id(&self, id: &ChunkId) -> Result<(String, Arc<Index>), Error> {
        let hit = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.iter().find(|c| c.id == *id).map(|c| c.name.clone())
        };
        let names = match hit {
            Some(name) => vec![name],
            None => self.names()?,
        };
        for name in names {
            match self.get_shared(&name) {
                Ok((got, index)) if got == *id => return Ok((name, index)),
                Ok(_) | Err(Error::NoImage(_)) | Err(Error::BadIndex(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoImage(format!("index {id}")))
    }

    /// Remove an image and the images staged from it (the chunks stay until
    /// [`ChunkStore::gc`]).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c.name != name);
        let path = self.path(name)?;
        fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoImage(name.to_owned()),
            _ => Error::Io { path, source: e },
        })?;
        self.remove_staged_of(name)?;
        Ok(())
    }

    /// All image names, sorted.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".idx"))
                    .map(str::to_owned)
            })
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every chunk that some image needs: what [`ChunkStore::gc`] must keep.
    pub fn referenced(&self) -> Result<HashSet<ChunkId>, Error> {
        let mut keep = HashSet::new();
        for name in self.names()? {
            keep.extend(self.get(&name)?.ids);
        }
        Ok(keep)
    }
}

/// Image names are file names: letters, digits, `.`, `_`, `-`, at most 64, not
/// starting with a dot.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (id, new) = store.put(b"hello chunk").unwrap();
        assert!(new);
        assert_eq!(store.put(b"hello chunk").unwrap(), (id, false));
        assert_eq!(store.get(&id, 1 << 20).unwrap(), b"hello chunk");
        assert!(store.has(&id));
    }

    #[test]
    fn a_corrupt_or_missing_chunk_is_reported_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (id, _) = store.put(&[7u8; 5000]).unwrap();
        let other = zstd::bulk::compress(&[8u8; 5000], 3).unwrap();
        fs::write(store.path(&id), other).unwrap();
        assert!(matches!(
            store.get(&id, 1 << 20),
            Err(Error::CorruptChunk { .. })
        ));
        fs::write(store.path(&id), b"not zstd").unwrap();
        assert!(matches!(
            store.get(&id, 1 << 20),
            Err(Error::CorruptChunk { .. })
        ));
        let missing = ChunkId::of(b"never stored");
        assert!(matches!(
            store.get(&missing, 1 << 20),
            Err(Error::MissingChunk { .. })
        ));
    }

    #[test]
    fn a_batch_names_its_chunks_only_at_commit_and_an_uncommitted_one_leaves_only_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, b) = (vec![1u8; 70_000], vec![2u8; 70_000]);
        let mut batch = store.batch();
        let (ida, new) = batch.put(&a).unwrap();
        assert!(new);
        assert_eq!(
            batch.put(&a).unwrap(),
            (ida, false),
            "the same chunk twice in a batch"
        );
        assert!(!store.has(&ida), "not under its name before the commit");
        batch.commit().unwrap();
        assert!(store.has(&ida));
        assert_eq!(store.get(&ida, a.len()).unwrap(), a);
        assert_eq!(
            store.batch().put(&a).unwrap(),
            (ida, false),
            "stored already"
        );
        // A batch that never commits (a crash) leaves a temporary file, no chunk.
        let mut lost = store.batch();
        let (idb, _) = lost.put(&b).unwrap();
        drop(lost);
        assert!(!store.has(&idb));
        let stats = store.gc(&[ida].into_iter().collect()).unwrap();
        assert_eq!((stats.temp_files_removed, stats.chunks_removed), (1, 0));
        assert!(store.has(&ida));
    }

    #[test]
    fn gc_keeps_referenced_chunks_and_removes_the_rest_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (keep, _) = store.put(b"keep me").unwrap();
        let (drop_id, _) = store.put(b"drop me").unwrap();
        let shard = store.path(&keep).parent().unwrap().to_owned();
        fs::write(shard.join(format!("{TEMP_PREFIX}123-0")), b"half a chunk").unwrap();
        let stats = store.gc(&HashSet::from([keep])).unwrap();
        assert_eq!((stats.chunks_removed, stats.temp_files_removed), (1, 1));
        assert!(store.has(&keep));
        assert!(!store.has(&drop_id));
    }

    #[test]
    fn catalog_adds_lists_refuses_bad_names_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::open(dir.path()).unwrap();
        let index = Index::build(64 << 10, 10, [crate::index::Chunk::Data(ChunkId::of(b"x"))]);
        images.add("win11-lab", &index).unwrap();
        assert!(matches!(
            images.add("win11-lab", &index),
            Err(Error::ImageExists(_))
        ));
        assert_eq!(images.get("win11-lab").unwrap(), index);
        assert_eq!(images.names().unwrap(), ["win11-lab"]);
        let (id, shared) = images.get_shared("win11-lab").unwrap();
        assert_eq!((id, &*shared), (index.id(), &index));
        let (name, by_id) = images.by_id(&id).unwrap();
        assert_eq!(
            *images.summary_by_id(&id).unwrap(),
            index.summary().encode()
        );
        assert_eq!((name.as_str(), &*by_id), ("win11-lab", &index));
        assert_eq!(
            images.referenced().unwrap(),
            HashSet::from([ChunkId::of(b"x")])
        );
        for bad in ["", "../x", "a/b", ".hidden", "x y", &"n".repeat(65)] {
            assert!(
                matches!(images.add(bad, &index), Err(Error::BadName(_))),
                "{bad:?}"
            );
        }
        images.remove("win11-lab").unwrap();
        assert!(matches!(images.get("win11-lab"), Err(Error::NoImage(_))));
        assert!(
            matches!(images.by_id(&id), Err(Error::NoImage(_))),
            "a removed image's index is not served from memory"
        );
    }
}
