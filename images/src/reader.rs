//! An image read through its index from the chunk store, as if it were the disk:
//! `Read + Seek` (and a `Write` that refuses), for looking at an image's partitions
//! and filesystems on the server without restoring it anywhere. Every chunk read is
//! verified against its id; zero and free chunks read as zeros.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::index::{Extent, RunKind};
use crate::{ChunkStore, Index};

#[derive(Debug)]
pub struct ImageReader<'a> {
    store: &'a ChunkStore,
    index: &'a Index,
    extents: Vec<Extent>,
    pos: u64,
    /// The last chunk read: (number, bytes).
    cached: Option<(u64, Vec<u8>)>,
}

impl<'a> ImageReader<'a> {
    pub fn new(store: &'a ChunkStore, index: &'a Index) -> ImageReader<'a> {
        ImageReader {
            store,
            index,
            extents: index.layout.extents().collect(),
            pos: 0,
            cached: None,
        }
    }

    fn chunk(&mut self, i: u64) -> std::io::Result<&[u8]> {
        if self.cached.as_ref().is_none_or(|(n, _)| *n != i) {
            let len = self.index.layout.chunk_len(i);
            // The extent holding chunk i: the last that starts at or before it.
            let at = self.extents.partition_point(|e| e.first <= i) - 1;
            let e = self.extents[at];
            let bytes = match e.kind {
                RunKind::Zero | RunKind::Free => vec![0u8; len],
                RunKind::Data => {
                    let id = &self.index.ids[(e.data_first + i - e.first) as usize];
                    self.store
                        .get(id, len)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                }
            };
            self.cached = Some((i, bytes));
        }
        Ok(&self.cached.as_ref().expect("just cached").1)
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.index.layout.total_size || buf.is_empty() {
            return Ok(0);
        }
        let size = u64::from(self.index.layout.chunk_size);
        let i = self.pos / size;
        let within = (self.pos % size) as usize;
        let chunk = self.chunk(i)?;
        let n = buf.len().min(chunk.len() - within);
        buf[..n].copy_from_slice(&chunk[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for ImageReader<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "an image in the store is read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.index.layout.total_size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = pos;
        Ok(pos)
    }
}
