//! A small sample disk, built in-process: a GPT with an EFI system partition (FAT)
//! and a "Windows" partition on FAT that has `Windows/System32` and
//! `Windows/Setup/Scripts`, so the kms profile can inject into it without ntfs-3g.
//! The demo, the simulator and the tests use it as their golden image; real images
//! have Windows on NTFS.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::io;
use crate::partition::{self, Slice};
use crate::Error;

const MIB: u64 = 1 << 20;

/// Build the sample disk at `path` (at least 40 MiB): `seed` varies the contents of
/// its files, so two seeds give two images that share most chunks.
pub fn sample_disk(path: &Path, size: u64, seed: u64) -> Result<(), Error> {
    if size < 40 * MIB {
        return Err(Error::Usage(format!(
            "a sample disk needs at least 40 MiB, not {size} bytes"
        )));
    }
    let bad = |why: String| Error::Partitions {
        disk: path.to_owned(),
        why,
    };
    File::create(path)
        .and_then(|f| f.set_len(size))
        .map_err(io(path))?;
    let rw = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))
    };
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size((size / 512 - 1).min(u64::from(u32::MAX)) as u32);
    mbr.overwrite_lba0(&mut rw()?)
        .map_err(|e| bad(format!("protective MBR: {e}")))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create(path)
        .map_err(|e| bad(format!("GPT: {e}")))?;
    let windows_len = size - 8 * MIB - 2 * MIB;
    for (name, len, kind) in [
        ("EFI system partition", 8 * MIB, gpt::partition_types::EFI),
        ("Windows", windows_len, gpt::partition_types::BASIC),
    ] {
        disk.add_partition(name, len, kind, 0, None)
            .map_err(|e| bad(format!("partition {name}: {e}")))?;
    }
    disk.write().map_err(|e| bad(format!("GPT: {e}")))?;
    let parts = partition::partitions(path)?;
    let file = rw()?;
    let fat_err = |e: std::io::Error| bad(format!("FAT: {e}"));
    let mut file_seed = seed;
    let mut noise = |len: usize| {
        file_seed = file_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        noise(len, file_seed)
    };
    for (part, label, files) in [
        (
            &parts[0],
            *b"EFI        ",
            vec![("EFI/BOOT/BOOTX64.EFI", 200_000)],
        ),
        (
            &parts[1],
            *b"WINDOWS    ",
            vec![
                ("Windows/System32/ntoskrnl.exe", 3_000_000),
                ("Windows/System32/config/SYSTEM", 1_500_000),
                ("Windows/Setup/Scripts/README.txt", 0),
            ],
        ),
    ] {
        let opts = fatfs::FormatVolumeOptions::new().volume_label(label);
        fatfs::format_volume(Slice::new(&file, part), opts).map_err(fat_err)?;
        let fs = fatfs::FileSystem::new(Slice::new(&file, part), fatfs::FsOptions::new())
            .map_err(fat_err)?;
        let root = fs.root_dir();
        for (name, len) in files {
            let (dirs, leaf) = name.rsplit_once('/').expect("a path");
            let mut dir = root.clone();
            for d in dirs.split('/') {
                dir = dir.create_dir(d).map_err(fat_err)?;
            }
            let mut out = dir.create_file(leaf).map_err(fat_err)?;
            let data = if len == 0 {
                b"netreset sample image\r\n".to_vec()
            } else {
                noise(len)
            };
            out.write_all(&data).map_err(fat_err)?;
        }
        drop(root);
        fs.unmount().map_err(fat_err)?;
    }
    file.sync_all().map_err(io(path))
}

/// `len` bytes of repeatable noise (xorshift64) from `seed`: incompressible data
/// for sample disks and tests.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{fat_has_dir, Fs};

    #[test]
    fn the_sample_disk_has_an_esp_and_a_fat_windows_partition_with_the_scripts_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.img");
        sample_disk(&path, 48 * MIB, 1).unwrap();
        let parts = partition::partitions(&path).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].esp && parts[0].fs == Fs::Fat);
        let file = File::open(&path).unwrap();
        assert!(fat_has_dir(
            Slice::new(&file, &parts[1]),
            "Windows/Setup/Scripts"
        ));
        assert!(fat_has_dir(
            Slice::new(&file, &parts[1]),
            "Windows/System32"
        ));
        assert!(sample_disk(&path, MIB, 1).is_err(), "too small");
    }

    /// Every file of a FAT filesystem, path -> content.
    fn files(disk: &Path, part: &partition::Partition) -> Vec<(String, Vec<u8>)> {
        use std::io::Read;
        let file = File::open(disk).unwrap();
        let fs = fatfs::FileSystem::new(Slice::new(&file, part), fatfs::FsOptions::new()).unwrap();
        let mut out = Vec::new();
        let mut todo = vec![(String::new(), fs.root_dir())];
        while let Some((at, dir)) = todo.pop() {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{at}/{name}");
                if e.is_dir() {
                    todo.push((path, e.to_dir()));
                } else {
                    let mut data = Vec::new();
                    e.to_file().read_to_end(&mut data).unwrap();
                    out.push((path, data));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_restore_over_garbage_keeps_every_fat_file_and_empties_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.img");
        sample_disk(&path, 48 * MIB, 1).unwrap();
        let store = crate::ChunkStore::open(dir.path()).unwrap();
        let imported = crate::import(&store, &path, 1 << 16, |_| {}).unwrap();
        assert!(imported.free_chunks > 200, "{} free", imported.free_chunks);
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0x5au8; 48 * MIB as usize]).unwrap();
        let local = crate::Local {
            store: &store,
            index: &imported.index,
        };
        crate::restore(&imported.index.summary(), &disk, &local, 2, &|_, _| {}).unwrap();
        let parts = partition::partitions(&path).unwrap();
        assert_eq!(partition::partitions(&disk).unwrap(), parts);
        for part in &parts {
            let want = files(&path, part);
            assert!(!want.is_empty());
            assert_eq!(files(&disk, part), want, "partition {}", part.number);
        }
        let back = std::fs::read(&disk).unwrap();
        assert!(
            !back.windows(4096).step_by(4096).any(|b| b == [0x5a; 4096]),
            "no page of the old disk's garbage survives"
        );
    }
}
