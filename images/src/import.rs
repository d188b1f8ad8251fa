//! Import of a raw disk image (a file or a block device) into the chunk store.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::io;
use crate::index::check_chunk_size;
use crate::{ChunkStore, Error, Index};

/// What an import did.
#[derive(Debug, PartialEq, Eq)]
pub struct Imported {
    pub index: Index,
    /// Chunks written to the store (the rest were there already, or zeros).
    pub new_chunks: u64,
    pub zero_chunks: u64,
    pub bytes_read: u64,
}

/// Read `path` in `chunk_size` pieces into `store`, calling `progress(bytes_read)`
/// after each chunk. All-zero chunks are recorded as zeros and not stored.
pub fn import(
    store: &ChunkStore,
    path: &Path,
    chunk_size: u64,
    mut progress: impl FnMut(u64),
) -> Result<Imported, Error> {
    let chunk_size = check_chunk_size(chunk_size)?;
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let (mut new_chunks, mut zero_chunks, mut total) = (0, 0, 0u64);
    loop {
        let len = read_full(&mut file, &mut buf).map_err(io(path))?;
        if len == 0 {
            break;
        }
        let data = &buf[..len];
        if data.iter().all(|&b| b == 0) {
            chunks.push(None);
            zero_chunks += 1;
        } else {
            let (id, new) = store.put(data)?;
            new_chunks += u64::from(new);
            chunks.push(Some(id));
        }
        total += len as u64;
        progress(total);
        if len < buf.len() {
            break;
        }
    }
    Ok(Imported {
        index: Index {
            chunk_size,
            total_size: total,
            chunks,
        },
        new_chunks,
        zero_chunks,
        bytes_read: total,
    })
}

/// Fill `buf` unless the file ends first; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIN_CHUNK_SIZE;

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
        assert_eq!(imported.index.chunks.len(), 4);
        assert_eq!(imported.zero_chunks, 1);
        assert_eq!(imported.new_chunks, 3);
        assert_eq!(*seen.last().unwrap(), bytes.len() as u64);
        let mut back = Vec::new();
        for (i, entry) in imported.index.chunks.iter().enumerate() {
            let len = imported.index.chunk_len(i);
            match entry {
                None => back.extend(std::iter::repeat_n(0u8, len)),
                Some(id) => back.extend(store.get(id, len).unwrap()),
            }
        }
        assert_eq!(back, bytes);
        // A second import of the same disk writes nothing new.
        let again = import(&store, &file, u64::from(MIN_CHUNK_SIZE), |_| {}).unwrap();
        assert_eq!((again.new_chunks, again.index), (0, imported.index));
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
