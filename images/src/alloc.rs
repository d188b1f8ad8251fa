//! Which parts of a disk hold nothing: the free clusters of its NTFS and FAT
//! partitions, read from NTFS's `$Bitmap` (the ntfs crate) and from the FAT itself.
//! Everything else counts as used: partition tables, other filesystems, space
//! between partitions, the metadata areas of NTFS and FAT, and a whole NTFS volume
//! that is marked dirty or holds a hibernated Windows (its bitmap may not say what
//! Windows will find when it resumes).
//!
//! Import and capture record a chunk that lies wholly in free space as free: it is
//! neither stored nor fetched, and a restore empties it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{KnownNtfsFileRecordNumber, Ntfs};

use crate::partition::{self, Fs, Partition, Window};
use crate::Error;

/// The clusters of one filesystem: where cluster 0 starts on the disk, and which
/// clusters are in use.
#[derive(Debug)]
pub struct Clusters {
    /// Byte offset of cluster 0 on the disk.
    pub start: u64,
    pub size: u64,
    pub count: u64,
    /// Bit `i` (LSB first): cluster `i` is in use.
    pub used: Vec<u8>,
}

impl Clusters {
    fn in_use(&self, i: u64) -> bool {
        self.used
            .get((i / 8) as usize)
            .is_none_or(|b| b & (1 << (i % 8)) != 0)
    }

    /// Whether the bytes `a..b` of the disk are wholly in free clusters.
    pub fn free(&self, a: u64, b: u64) -> bool {
        let end = self.start + self.count * self.size;
        if a < self.start || b > end || a >= b {
            return false;
        }
        let (lo, hi) = (
            (a - self.start) / self.size,
            (b - self.start).div_ceil(self.size),
        );
        let mut i = lo;
        while i < hi {
            // Whole bytes of the bitmap at once where aligned.
            if i % 8 == 0 && hi - i >= 8 {
                if self.used.get((i / 8) as usize).is_none_or(|&b| b != 0) {
                    return false;
                }
                i += 8;
            } else {
                if self.in_use(i) {
                    return false;
                }
                i += 1;
            }
        }
        true
    }

    pub fn free_bytes(&self) -> u64 {
        (0..self.count).filter(|&i| !self.in_use(i)).count() as u64 * self.size
    }
}

/// What was found on a disk: the free clusters of each filesystem read, and what
/// could not be read (counted as used).
#[derive(Debug, Default)]
pub struct Allocation {
    pub filesystems: Vec<(u32, Clusters)>,
    /// One line per partition whose free space is not used, and why.
    pub notes: Vec<String>,
}

impl Allocation {
    /// Whether the bytes `a..b` are wholly free in one filesystem.
    pub fn free(&self, a: u64, b: u64) -> bool {
        self.filesystems.iter().any(|(_, c)| c.free(a, b))
    }

    pub fn free_bytes(&self) -> u64 {
        self.filesystems.iter().map(|(_, c)| c.free_bytes()).sum()
    }
}

/// Read the allocation of the disk `disk` (`path` names it in messages). A disk
/// without a partition table has no free space.
pub fn allocation<D>(disk: &mut D, path: &Path) -> Result<Allocation, Error>
where
    D: Read + Write + Seek + std::fmt::Debug,
{
    let parts = match partition::partitions_in(disk, path) {
        Ok(parts) => parts,
        Err(Error::Partitions { .. }) => return Ok(Allocation::default()),
        Err(e) => return Err(e),
    };
    let mut out = Allocation::default();
    for p in &parts {
        let read = match p.fs {
            Fs::Ntfs => ntfs_clusters(Window::new(&mut *disk, p), p),
            Fs::Fat => fat_clusters(Window::new(&mut *disk, p), p),
            Fs::BitLocker | Fs::Other => continue,
        };
        match read {
            Ok(c) => out.filesystems.push((p.number, c)),
            Err(why) => out.notes.push(format!(
                "partition {}: {why}; all of it counts as used",
                p.number
            )),
        }
    }
    Ok(out)
}

/// NTFS: `$Bitmap` (file record 6) has one bit per cluster, set when in use.
fn ntfs_clusters<T: Read + Seek>(mut fs: T, p: &Partition) -> Result<Clusters, String> {
    let fs = &mut fs;
    let why = |e: ntfs::NtfsError| format!("NTFS not readable ({e})");
    let mut ntfs = Ntfs::new(fs).map_err(why)?;
    let flags = ntfs.volume_info(fs).map_err(why)?.flags();
    if flags.contains(NtfsVolumeFlags::IS_DIRTY) {
        return Err("the NTFS volume is marked dirty (not shut down cleanly; run chkdsk)".into());
    }
    ntfs.read_upcase_table(fs).map_err(why)?;
    if hibernated(&ntfs, fs).map_err(why)? {
        return Err(
            "Windows on it is hibernated (fast startup: shut down with `shutdown /s /t 0`)".into(),
        );
    }
    let size = u64::from(ntfs.cluster_size());
    let count = ntfs.size() / size;
    let bitmap = ntfs
        .file(fs, KnownNtfsFileRecordNumber::Bitmap as u64)
        .map_err(why)?;
    let item = bitmap
        .data(fs, "")
        .ok_or("NTFS $Bitmap has no data")?
        .map_err(why)?;
    let attribute = item.to_attribute().map_err(why)?;
    let want = count.div_ceil(8);
    if attribute.value_length() < want {
        return Err(format!(
            "NTFS $Bitmap holds {} bytes for {count} clusters",
            attribute.value_length()
        ));
    }
    let mut used = vec![0u8; want as usize];
    attribute
        .value(fs)
        .map_err(why)?
        .attach(fs)
        .read_exact(&mut used)
        .map_err(|e| format!("reading NTFS $Bitmap: {e}"))?;
    Ok(Clusters {
        start: p.start,
        size,
        count,
        used,
    })
}

/// Whether `hiberfil.sys` in the root holds a hibernated system (its first four
/// bytes `HIBR`, any case, as ntfs-3g checks).
fn hibernated<T: Read + Seek>(ntfs: &Ntfs, fs: &mut T) -> Result<bool, ntfs::NtfsError> {
    let root = ntfs.root_directory(fs)?;
    let index = root.directory_index(fs)?;
    let mut finder = index.finder();
    let Some(entry) = NtfsFileNameIndex::find(&mut finder, ntfs, fs, "hiberfil.sys") else {
        return Ok(false);
    };
    let file = entry?.to_file(ntfs, fs)?;
    let Some(item) = file.data(fs, "") else {
        return Ok(false);
    };
    let item = item?;
    let attribute = item.to_attribute()?;
    let mut head = [0u8; 4];
    let mut value = attribute.value(fs)?.attach(fs);
    Ok(value.read_exact(&mut head).is_ok() && head.eq_ignore_ascii_case(b"HIBR"))
}

/// FAT12/16/32: cluster `n` (from 2) is free when its FAT entry is 0. Everything in
/// front of the data area (boot sector, FATs, FAT12/16's root directory) is used.
fn fat_clusters<T: Read + Seek>(mut fs: T, p: &Partition) -> Result<Clusters, String> {
    let mut boot = [0u8; 512];
    fs.read_exact(&mut boot)
        .map_err(|e| format!("reading the FAT boot sector: {e}"))?;
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
    let u32_at = |at: usize| {
        u64::from(u32::from_le_bytes(
            boot[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let (bps, spc) = (u16_at(11), u64::from(boot[13]));
    let (reserved, fats, root_entries) = (u16_at(14), u64::from(boot[16]), u16_at(17));
    let total = if u16_at(19) != 0 {
        u16_at(19)
    } else {
        u32_at(32)
    };
    let fat_sectors = if u16_at(22) != 0 {
        u16_at(22)
    } else {
        u32_at(36)
    };
    if !(bps.is_power_of_two() && (512..=4096).contains(&bps) && spc.is_power_of_two())
        || fats == 0
        || fat_sectors == 0
    {
        return Err(format!(
            "FAT boot sector not understood ({bps} bytes a sector, {spc} a cluster, {fats} FATs)"
        ));
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if total <= data_start || total * bps > p.len {
        return Err("FAT boot sector has sizes that do not fit the partition".into());
    }
    let clusters = (total - data_start) / spc;
    let bits = match clusters {
        0..4085 => 12,
        4085..65525 => 16,
        _ => 32,
    };
    let fat_len = fat_sectors * bps;
    if (clusters + 2) * bits / 8 > fat_len {
        return Err("the FAT is too small for its clusters".into());
    }
    let mut fat = vec![0u8; fat_len as usize];
    fs.seek(SeekFrom::Start(reserved * bps))
        .and_then(|_| fs.read_exact(&mut fat))
        .map_err(|e| format!("reading the FAT: {e}"))?;
    let entry = |n: u64| -> u32 {
        match bits {
            12 => {
                let at = (n * 3 / 2) as usize;
                let v = u32::from(u16::from_le_bytes([fat[at], fat[at + 1]]));
                if n % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xfff
                }
            }
            16 => u32::from(u16::from_le_bytes([
                fat[2 * n as usize],
                fat[2 * n as usize + 1],
            ])),
            _ => {
                let at = 4 * n as usize;
                u32::from_le_bytes(fat[at..at + 4].try_into().expect("4 bytes")) & 0x0fff_ffff
            }
        }
    };
    let mut used = vec![0u8; clusters.div_ceil(8) as usize];
    for i in 0..clusters {
        if entry(i + 2) != 0 {
            used[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    Ok(Clusters {
        start: p.start + data_start * bps,
        size: spc * bps,
        count: clusters,
        used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusters(used: &[u8]) -> Clusters {
        Clusters {
            start: 1000,
            size: 100,
            count: used.len() as u64 * 8,
            used: used.to_vec(),
        }
    }

    #[test]
    fn a_range_is_free_only_when_every_cluster_it_touches_is_free() {
        let c = clusters(&[0b0000_0100, 0, 0, 0xff]);
        assert!(!c.free(1000, 1300), "cluster 2 is used");
        assert!(c.free(1300, 1400));
        assert!(!c.free(1250, 1400), "touches cluster 2");
        assert!(c.free(1300, 3400), "clusters 3..24 are free");
        assert!(!c.free(1300, 3500), "cluster 24 is used");
        assert!(!c.free(900, 1000), "before the filesystem");
        assert!(!c.free(4100, 4300), "past its last cluster");
        assert_eq!(c.free_bytes(), (32 - 9) * 100);
    }

    #[test]
    fn ntfs_free_space_is_what_the_bitmap_says_and_garbage_there_changes_nothing_ntfs_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/windows-generalized.img.zst");
        let mut disk = zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap();
        let found = allocation(&mut std::io::Cursor::new(&mut disk), &path).unwrap();
        assert!(found.notes.is_empty(), "{:?}", found.notes);
        let (number, c) = &found.filesystems[0];
        assert_eq!((*number, c.start), (1, 2048 * 512));
        assert!(
            !c.free(c.start, c.start + c.size),
            "the boot sector's cluster"
        );
        let free = c.free_bytes();
        assert!(free > (1 << 20) && free < (6 << 20), "{free} bytes free");
        // Fill every free cluster with garbage: State.ini still reads the same.
        for i in 0..c.count {
            if !c.in_use(i) {
                let at = (c.start + i * c.size) as usize;
                disk[at..at + c.size as usize].fill(0xa5);
            }
        }
        let part = Partition {
            number: 1,
            start: c.start,
            len: 6 << 20,
            fs: Fs::Ntfs,
            esp: false,
        };
        let mut cursor = std::io::Cursor::new(&mut disk);
        let state = crate::inspect::state_ini(Window::new(&mut cursor, &part)).unwrap();
        assert_eq!(
            state.as_deref(),
            Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
        );
    }

    #[test]
    fn a_disk_without_a_partition_table_has_no_free_space() {
        let mut disk = std::io::Cursor::new(vec![0u8; 1 << 20]);
        let found = allocation(&mut disk, Path::new("blank")).unwrap();
        assert!(found.filesystems.is_empty());
        assert!(!found.free(0, 4096));
    }

    #[test]
    fn fat_free_clusters_are_those_whose_entry_is_zero() {
        // A FAT16 volume made in-process by fatfs, with one file.
        let mut disk = std::io::Cursor::new(vec![0u8; 16 << 20]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat16),
        )
        .unwrap();
        disk.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            let mut f = fs.root_dir().create_file("a.bin").unwrap();
            f.write_all(&vec![7u8; 300 << 10]).unwrap();
        }
        let part = Partition {
            number: 1,
            start: 0,
            len: 16 << 20,
            fs: Fs::Fat,
            esp: false,
        };
        disk.set_position(0);
        let c = fat_clusters(&mut disk, &part).unwrap();
        disk.set_position(0);
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        let stats = fs.stats().unwrap();
        assert_eq!(c.count, u64::from(stats.total_clusters()));
        assert_eq!(c.size, u64::from(stats.cluster_size()));
        assert_eq!(
            c.free_bytes(),
            u64::from(stats.free_clusters()) * c.size,
            "the same free clusters as fatfs counts"
        );
        assert!(c.free_bytes() < (16 << 20) - (300 << 10));
        assert!(
            !c.free(c.start, c.start + c.size),
            "the file's first cluster"
        );
        let end = c.start + c.count * c.size;
        assert!(c.free(end - c.size, end), "the last cluster is free");
    }
}
