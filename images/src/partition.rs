//! The partitions of a restored disk, from its GPT (gpt crate) or MBR (mbrman crate),
//! with the filesystem each one holds, read from its boot sector.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::io;
use crate::Error;

/// What a partition holds, as its boot sector says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Fat,
    Ntfs,
    /// A BitLocker volume (boot sector OEM id `-FVE-FS-`): unreadable without its key.
    BitLocker,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (sda1, nvme0n1p1).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    pub len: u64,
    pub fs: Fs,
    /// A GPT EFI system partition, or an MBR partition of type 0xEF.
    pub esp: bool,
}

const SECTOR: u64 = 512;
/// The MBR partition type of a protective MBR in front of a GPT.
const MBR_GPT_PROTECTIVE: u8 = 0xee;
const MBR_ESP: u8 = 0xef;

/// Read the partition table of the disk at `path` (512-byte logical sectors).
pub fn partitions(path: &Path) -> Result<Vec<Partition>, Error> {
    let mut file = File::open(path).map_err(io(path))?;
    partitions_in(&mut file, path)
}

/// Read the partition table of any disk-like thing (a file, or an image read from
/// its chunks); `path` names it in errors. Nothing is written.
pub fn partitions_in<D>(file: &mut D, path: &Path) -> Result<Vec<Partition>, Error>
where
    D: Read + std::io::Write + Seek + std::fmt::Debug,
{
    let bad = |why: String| Error::Partitions {
        disk: path.to_owned(),
        why,
    };
    let mbr = mbrman::MBR::read_from(&mut *file, SECTOR as u32)
        .map_err(|e| bad(format!("no MBR or GPT partition table: {e}")))?;
    let protective = mbr.iter().any(|(_, p)| p.sys == MBR_GPT_PROTECTIVE);
    let mut found = Vec::new();
    if protective {
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(&mut *file)
            .map_err(|e| bad(format!("bad GPT: {e}")))?;
        for (&number, p) in disk.partitions() {
            if !p.is_used() {
                continue;
            }
            let sectors = p
                .last_lba
                .checked_add(1)
                .and_then(|end| end.checked_sub(p.first_lba))
                .ok_or_else(|| bad(format!("partition {number} ends before it starts")))?;
            let (Some(start), Some(len)) =
                (p.first_lba.checked_mul(SECTOR), sectors.checked_mul(SECTOR))
            else {
                return Err(bad(format!("partition {number} lies beyond any disk")));
            };
            found.push((
                number,
                start,
                len,
                p.part_type_guid == gpt::partition_types::EFI,
            ));
        }
    } else {
        for (number, p) in mbr.iter() {
            if !p.is_used() || p.is_extended() {
                continue;
            }
            let start = u64::from(p.starting_lba) * SECTOR;
            let len = u64::from(p.sectors) * SECTOR;
            found.push((number as u32, start, len, p.sys == MBR_ESP));
        }
    }
    let size = file.seek(SeekFrom::End(0)).map_err(io(path))?;
    let mut out = Vec::new();
    for (number, start, len, esp) in found {
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "partition {number} ({start}+{len} bytes) runs past the end of the disk ({size} bytes)"
            )));
        }
        let mut boot = [0u8; 512];
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        file.read_exact(&mut boot).map_err(io(path))?;
        out.push(Partition {
            number,
            start,
            len,
            fs: detect(&boot),
            esp,
        });
    }
    out.sort_by_key(|p| p.start);
    Ok(out)
}

/// The filesystem a boot sector belongs to.
pub fn detect(boot: &[u8; 512]) -> Fs {
    match &boot[3..11] {
        b"NTFS    " => return Fs::Ntfs,
        b"-FVE-FS-" => return Fs::BitLocker,
        _ => {}
    }
    let signed = boot[510] == 0x55 && boot[511] == 0xaa;
    let fat_name =
        boot[54..59] == *b"FAT12" || boot[54..59] == *b"FAT16" || boot[82..87] == *b"FAT32";
    if signed && fat_name {
        Fs::Fat
    } else {
        Fs::Other
    }
}

/// The NTFS partitions, largest first: where Windows lives is checked in that order
/// (recovery partitions are small; a data partition may be larger).
pub fn ntfs_partitions(parts: &[Partition]) -> Vec<&Partition> {
    let mut ntfs: Vec<&Partition> = parts.iter().filter(|p| p.fs == Fs::Ntfs).collect();
    ntfs.sort_by_key(|p| std::cmp::Reverse(p.len));
    ntfs
}

/// A partition of a disk file as a file of its own, for filesystem code that wants
/// `Read + Write + Seek` from offset 0.
pub type Slice<'a> = Window<&'a File>;

/// A partition of any `Read + Write + Seek` disk (a file, an image read from its
/// chunks) as a device of its own: reads and writes never leave it.
#[derive(Debug)]
pub struct Window<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D: Read + std::io::Write + Seek> Window<D> {
    pub fn new(inner: D, part: &Partition) -> Window<D> {
        Window {
            inner,
            start: part.start,
            len: part.len,
            pos: 0,
        }
    }
}

impl<D: Read + std::io::Write + Seek> Read for Window<D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: Read + std::io::Write + Seek> std::io::Write for Window<D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Read + std::io::Write + Seek> Seek for Window<D> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Whether the FAT filesystem on `device` has the directory `path` ('/'-separated).
pub fn fat_has_dir<D: Read + std::io::Write + Seek>(device: D, path: &str) -> bool {
    let Ok(fs) = fatfs::FileSystem::new(device, fatfs::FsOptions::new()) else {
        return false;
    };
    let found = fs.root_dir().open_dir(path).is_ok();
    found
}
