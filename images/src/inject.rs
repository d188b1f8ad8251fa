//! Injection of the staged files into a restored disk: FAT in-process with the fatfs
//! crate, NTFS through ntfs-3g's `ntfscp` (no NTFS writer in Rust is trustworthy
//! enough to let loose on a school's Windows partition).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::io;
use crate::partition::{self, Fs, Partition, Slice, Window};
use crate::staged::{InjectFile, Target, WindowsFs, SCRIPTS_DIR};
use crate::{ChunkStore, Error, ImageReader, Index};

/// The ntfs-3g tools injection into NTFS needs.
const NTFS_TOOLS: [&str; 2] = ["ntfscp", "ntfsls"];

/// What holds Windows in an image, read from its chunks in the store (staging
/// calls this): a FAT partition with `Windows/Setup/Scripts`, else NTFS, else none.
pub fn image_windows_fs(store: &ChunkStore, index: &Index, name: &str) -> Result<WindowsFs, Error> {
    let mut reader = ImageReader::new(store, index);
    let parts = match partition::partitions_in(&mut reader, Path::new(name)) {
        Ok(parts) => parts,
        // No partition table: nothing to inject into.
        Err(Error::Partitions { .. }) => return Ok(WindowsFs::None),
        Err(e) => return Err(e),
    };
    for p in parts.iter().filter(|p| p.fs == Fs::Fat) {
        if partition::fat_has_dir(Window::new(&mut reader, p), SCRIPTS_DIR) {
            return Ok(WindowsFs::Fat);
        }
    }
    Ok(if parts.iter().any(|p| p.fs == Fs::Ntfs) {
        WindowsFs::Ntfs
    } else {
        WindowsFs::None
    })
}

/// Fail early, before the disk is touched, when `files` need a tool this machine
/// lacks: ntfs-3g's, when Windows is on NTFS.
pub fn check_tools(files: &[InjectFile], windows_fs: WindowsFs) -> Result<(), Error> {
    if windows_fs == WindowsFs::Fat {
        return Ok(());
    }
    check_tools_in(files, std::env::var_os("PATH").as_deref())
}

fn check_tools_in(files: &[InjectFile], path: Option<&std::ffi::OsStr>) -> Result<(), Error> {
    if let Some(f) = files.iter().find(|f| f.target == Target::Windows) {
        for tool in NTFS_TOOLS {
            if which(tool, path).is_none() {
                return Err(Error::Inject(format!(
                    "this staged image writes {} into the Windows (NTFS) partition, which \
                     needs {tool} from ntfs-3g; it is not on PATH (Debian: apt-get install ntfs-3g)",
                    f.path
                )));
            }
        }
    }
    Ok(())
}

fn which(tool: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The FAT partition files with [`Target::Fat`] go to: the one labelled `label`, or
/// the EFI system partition when `label` is empty.
pub fn fat_partition(
    disk: &Path,
    parts: &[Partition],
    label: &str,
) -> Result<Option<Partition>, Error> {
    let file = File::open(disk).map_err(io(disk))?;
    for p in parts.iter().filter(|p| p.fs == Fs::Fat) {
        if label.is_empty() {
            if p.esp {
                return Ok(Some(p.clone()));
            }
            continue;
        }
        // A FAT partition fatfs cannot mount is not the one we look for.
        let Ok(fs) = fatfs::FileSystem::new(Slice::new(&file, p), fatfs::FsOptions::new()) else {
            continue;
        };
        // Labels are compared without case: Windows shows them upper case.
        if fs.volume_label().trim_end().eq_ignore_ascii_case(label) {
            return Ok(Some(p.clone()));
        }
    }
    Ok(None)
}

/// Write `files` into the disk's filesystems. Parent directories are created on FAT;
/// on NTFS they must exist in the image.
pub fn inject(disk: &Path, fat_label: &str, files: &[InjectFile]) -> Result<(), Error> {
    if files.is_empty() {
        return Ok(());
    }
    let parts = partition::partitions(disk)?;
    let fat: Vec<&InjectFile> = files.iter().filter(|f| f.target == Target::Fat).collect();
    let ntfs: Vec<&InjectFile> = files
        .iter()
        .filter(|f| f.target == Target::Windows)
        .collect();
    if !fat.is_empty() {
        let part = fat_partition(disk, &parts, fat_label)?.ok_or_else(|| {
            Error::Inject(match fat_label {
                "" => format!(
                    "{} has no EFI system partition to write {} to",
                    disk.display(),
                    fat[0].path
                ),
                l => format!(
                    "{} has no FAT partition labelled {l:?} to write {} to",
                    disk.display(),
                    fat[0].path
                ),
            })
        })?;
        write_fat(disk, &part, &fat)?;
    }
    if !ntfs.is_empty() {
        // Windows on FAT (test and simulator images): written in-process.
        let file = File::open(disk).map_err(io(disk))?;
        let fat_windows = parts
            .iter()
            .filter(|p| p.fs == Fs::Fat)
            .find(|p| partition::fat_has_dir(Slice::new(&file, p), SCRIPTS_DIR));
        if let Some(part) = fat_windows {
            return write_fat(disk, part, &ntfs);
        }
        check_tools_in(files, std::env::var_os("PATH").as_deref())?;
        let candidates = partition::ntfs_partitions(&parts);
        if candidates.is_empty() {
            return Err(Error::Inject(format!(
                "{} has no NTFS partition to write {} to",
                disk.display(),
                ntfs[0].path
            )));
        }
        write_ntfs(disk, &candidates, &ntfs)?;
    }
    Ok(())
}

fn fat_error(disk: &Path, part: &Partition, e: std::io::Error) -> Error {
    Error::Inject(format!(
        "{} partition {} (FAT): {e}",
        disk.display(),
        part.number
    ))
}

fn write_fat(disk: &Path, part: &Partition, files: &[&InjectFile]) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io(disk))?;
    let err = |e| fat_error(disk, part, e);
    {
        let fs = fatfs::FileSystem::new(Slice::new(&file, part), fatfs::FsOptions::new())
            .map_err(err)?;
        let root = fs.root_dir();
        for f in files {
            let (dirs, name) = match f.path.rsplit_once('/') {
                Some((d, n)) => (Some(d), n),
                None => (None, f.path.as_str()),
            };
            let dir = match dirs {
                None => root.clone(),
                Some(d) => {
                    let mut dir = root.clone();
                    for c in d.split('/') {
                        dir = dir.create_dir(c).map_err(err)?;
                    }
                    dir
                }
            };
            let mut out = dir.create_file(name).map_err(err)?;
            out.truncate().map_err(err)?;
            out.write_all(&f.data).map_err(err)?;
            out.flush().map_err(err)?;
        }
        drop(root);
        // Unmount explicitly: dropping would swallow an error writing the FS info.
        fs.unmount().map_err(err)?;
    }
    file.sync_all().map_err(io(disk))
}

/// Write `files` into the Windows partition: among `candidates` (largest first), the
/// one with a `Windows/System32` directory; a lone NTFS partition is taken as it is.
fn write_ntfs(disk: &Path, candidates: &[&Partition], files: &[&InjectFile]) -> Result<(), Error> {
    let work = tempfile::tempdir().map_err(io(std::env::temp_dir()))?;
    let work = work.path();
    let block = std::fs::metadata(disk)
        .map_err(io(disk))?
        .file_type()
        .is_block_device();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io(disk))?;
    let mut looked = Vec::new();
    for part in candidates {
        // A disk image file: ntfs-3g cannot open a partition at an offset, so the
        // partition is copied out, written, and the blocks that changed copied back.
        let (device, before) = if block {
            (partition_device(disk, part)?, None)
        } else {
            let image = work.join(format!("partition{}", part.number));
            let before = copy_range(&file, part.start, part.len, &image)?;
            (image, Some(before))
        };
        if candidates.len() > 1 && !ntfs_has(&device, "/Windows/System32") {
            looked.push(part.number.to_string());
            continue;
        }
        copy_in(&device, part, files, work)?;
        if let Some(before) = before {
            copy_back(&device, &before, &file, part)?;
            file.sync_all().map_err(io(disk))?;
        }
        return Ok(());
    }
    Err(Error::Inject(format!(
        "none of the NTFS partitions of {} (numbers {}) has a Windows/System32 directory",
        disk.display(),
        looked.join(", ")
    )))
}

fn ntfs_has(device: &Path, dir: &str) -> bool {
    Command::new("ntfsls")
        .arg("-p")
        .arg(dir)
        .arg(device)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn copy_in(
    device: &Path,
    part: &Partition,
    files: &[&InjectFile],
    work: &Path,
) -> Result<(), Error> {
    for (i, f) in files.iter().enumerate() {
        let parent = f.path.rsplit_once('/').map_or("", |(d, _)| d);
        // ntfscp cannot create directories: say which one the image lacks.
        let ls = Command::new("ntfsls")
            .arg("-p")
            .arg(format!("/{parent}"))
            .arg(device)
            .output()
            .map_err(|e| Error::Inject(format!("running ntfsls: {e}")))?;
        if !ls.status.success() {
            return Err(Error::Inject(format!(
                "the Windows partition (number {}) has no /{parent} directory for {} ({}); \
                 create it in the golden image (mkdir C:\\{}) and import it again",
                part.number,
                f.path,
                String::from_utf8_lossy(&ls.stderr).trim(),
                parent.replace('/', "\\")
            )));
        }
        let src = work.join(format!("file{i}"));
        std::fs::write(&src, &f.data).map_err(io(&src))?;
        let cp = Command::new("ntfscp")
            .arg(device)
            .arg(&src)
            .arg(format!("/{}", f.path))
            .output()
            .map_err(|e| Error::Inject(format!("running ntfscp: {e}")))?;
        if !cp.status.success() {
            return Err(Error::Inject(format!(
                "ntfscp {} /{} failed: {}",
                device.display(),
                f.path,
                String::from_utf8_lossy(&cp.stderr).trim()
            )));
        }
    }
    Ok(())
}

const BLOCK: usize = 1 << 20;

/// Copy `len` bytes at `start` of `file` to a new file at `to`, keeping the hashes of
/// its blocks so [`copy_back`] writes only what changed.
fn copy_range(file: &File, start: u64, len: u64, to: &Path) -> Result<Vec<blake3::Hash>, Error> {
    let out = File::create(to).map_err(io(to))?;
    let mut buf = vec![0u8; BLOCK];
    let mut hashes = Vec::new();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(BLOCK as u64) as usize;
        file.read_exact_at(&mut buf[..n], start + done)
            .map_err(|e| Error::Inject(format!("reading the partition: {e}")))?;
        out.write_all_at(&buf[..n], done).map_err(io(to))?;
        hashes.push(blake3::hash(&buf[..n]));
        done += n as u64;
    }
    Ok(hashes)
}

fn copy_back(
    from: &Path,
    before: &[blake3::Hash],
    file: &File,
    part: &Partition,
) -> Result<(), Error> {
    let src = File::open(from).map_err(io(from))?;
    let mut buf = vec![0u8; BLOCK];
    // The partition's own length: nothing past its end is ever written back.
    let (start, len) = (part.start, part.len);
    for (i, hash) in before.iter().enumerate() {
        let at = (i * BLOCK) as u64;
        let n = (len - at).min(BLOCK as u64) as usize;
        src.read_exact_at(&mut buf[..n], at).map_err(io(from))?;
        if blake3::hash(&buf[..n]) != *hash {
            file.write_all_at(&buf[..n], start + at)
                .map_err(|e| Error::Inject(format!("writing the partition back: {e}")))?;
        }
    }
    Ok(())
}

/// The device node of partition `part` of the block device `disk`, after asking the
/// kernel to read the (just restored) partition table again.
fn partition_device(disk: &Path, part: &Partition) -> Result<PathBuf, Error> {
    let reread = Command::new("blockdev")
        .arg("--rereadpt")
        .arg(disk)
        .output();
    let reread_note = match &reread {
        Ok(o) if o.status.success() => String::new(),
        Ok(o) => format!(
            " (blockdev --rereadpt: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!(" (blockdev --rereadpt: {e})"),
    };
    let name = std::fs::canonicalize(disk)
        .map_err(io(disk))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = Path::new("/sys/class/block").join(&name);
    let entries = std::fs::read_dir(&sys).map_err(io(&sys))?;
    for entry in entries.flatten() {
        let read = |name: &str| {
            std::fs::read_to_string(entry.path().join(name))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        if read("partition") != Some(u64::from(part.number)) {
            continue;
        }
        // The kernel's idea of the partition must be the restored table's, or ntfscp
        // would write where the old partition was.
        let (start, size) = (
            read("start").unwrap_or(0) * 512,
            read("size").unwrap_or(0) * 512,
        );
        if (start, size) != (part.start, part.len) {
            return Err(Error::Inject(format!(
                "the kernel still has the old partition table of {}: partition {} is at {start}+{size}, \
                 the restored one at {}+{}{reread_note}; nothing was injected",
                disk.display(),
                part.number,
                part.start,
                part.len
            )));
        }
        return Ok(Path::new("/dev").join(entry.file_name()));
    }
    Err(Error::Inject(format!(
        "the kernel shows no partition {} of {} after re-reading its partition table{reread_note}",
        part.number,
        disk.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Read;

    const MIB: u64 = 1 << 20;

    fn rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    fn format(path: &Path, part: &Partition, label: &[u8; 11]) {
        let file = rw(path);
        let opts = fatfs::FormatVolumeOptions::new().volume_label(*label);
        fatfs::format_volume(Slice::new(&file, part), opts).unwrap();
    }

    /// A 40 MiB GPT disk: an 8 MiB EFI system partition (FAT) and a data partition.
    fn gpt_disk(path: &Path) -> Vec<Partition> {
        let size = 40 * MIB;
        File::create(path).unwrap().set_len(size).unwrap();
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size((size / 512 - 1) as u32);
        mbr.overwrite_lba0(&mut rw(path)).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create(path)
            .unwrap();
        disk.add_partition(
            "EFI system partition",
            8 * MIB,
            gpt::partition_types::EFI,
            0,
            None,
        )
        .unwrap();
        disk.add_partition("data", 16 * MIB, gpt::partition_types::BASIC, 0, None)
            .unwrap();
        disk.write().unwrap();
        let parts = partition::partitions(path).unwrap();
        format(path, &parts[0], b"EFI        ");
        partition::partitions(path).unwrap()
    }

    fn fat_file(path: &Path, part: &Partition, name: &str) -> Option<Vec<u8>> {
        let file = File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(Slice::new(&file, part), fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file(name).ok()?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        Some(out)
    }

    fn fat(path: &str, data: &[u8]) -> InjectFile {
        InjectFile {
            target: Target::Fat,
            path: path.into(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn gpt_partitions_are_found_with_the_esp_marked_and_its_fat_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let parts = gpt_disk(&path);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].esp && parts[0].fs == Fs::Fat, "{parts:?}");
        assert_eq!(parts[0].len, 8 * MIB);
        assert!(!parts[1].esp && parts[1].fs == Fs::Other);
    }

    #[test]
    fn fat_files_land_in_the_esp_with_their_directories_and_replace_old_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let parts = gpt_disk(&path);
        let before = std::fs::read(&path).unwrap();
        inject(
            &path,
            "",
            &[fat(
                "netreset/station.json",
                b"{\"a\": 1, \"long\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
            )],
        )
        .unwrap();
        inject(&path, "", &[fat("netreset/station.json", b"{}")]).unwrap();
        assert_eq!(
            fat_file(&path, &parts[0], "netreset/station.json").unwrap(),
            b"{}"
        );
        let after = std::fs::read(&path).unwrap();
        let esp = parts[0].start as usize..(parts[0].start + parts[0].len) as usize;
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            if a != b {
                assert!(esp.contains(&i), "byte {i} outside the ESP changed");
            }
        }
    }

    #[test]
    fn a_labelled_fat_partition_is_chosen_over_the_esp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        File::create(&path).unwrap().set_len(40 * MIB).unwrap();
        let mut mbr = mbrman::MBR::new_from(&mut rw(&path), 512, [1, 2, 3, 4]).unwrap();
        for (slot, sys, start) in [(1, 0xef, 2048u32), (2, 0x0c, 2048 + 16384)] {
            mbr[slot] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_INACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys,
                last_chs: mbrman::CHS::empty(),
                starting_lba: start,
                sectors: 16384,
            };
        }
        mbr.write_into(&mut rw(&path)).unwrap();
        let parts = partition::partitions(&path).unwrap();
        assert!(parts[0].esp && !parts[1].esp);
        format(&path, &parts[0], b"EFI        ");
        format(&path, &parts[1], b"NRCONF     ");
        inject(&path, "NRCONF", &[fat("station.json", b"x")]).unwrap();
        assert_eq!(fat_file(&path, &parts[1], "station.json").unwrap(), b"x");
        assert!(fat_file(&path, &parts[0], "station.json").is_none());
        let err = inject(&path, "OTHER", &[fat("a", b"x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no FAT partition labelled \"OTHER\""), "{err}");
    }

    #[test]
    fn ntfs_files_need_ntfscp_and_a_disk_without_a_table_is_refused() {
        let ntfs = InjectFile {
            target: Target::Windows,
            path: "Windows/Setup/Scripts/SetupComplete.cmd".into(),
            data: b"rem".to_vec(),
        };
        let empty = tempfile::tempdir().unwrap();
        let err = check_tools_in(std::slice::from_ref(&ntfs), Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ntfscp") && err.contains("apt-get install ntfs-3g"),
            "{err}"
        );
        assert!(
            check_tools_in(&[fat("a", b"")], None).is_ok(),
            "FAT needs no tool"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; MIB as usize]).unwrap();
        let err = inject(&path, "", &[fat("a", b"x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("partition table"), "{err}");
        assert!(
            std::fs::read(&path).unwrap().iter().all(|&b| b == 0),
            "nothing written"
        );
    }
}
