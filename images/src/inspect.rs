//! What an image holds, read from its chunks: the partitions, whether one is
//! BitLocker-encrypted, and whether the Windows in it is generalized (sysprep
//! `/generalize`), from `Windows\Setup\State\State.ini`, which Windows Setup keeps.
//! A KMS campaign needs a generalized image: each reset of it makes a new client
//! machine id (CMID), and only distinct CMIDs raise the KMS host's count.

use std::io::{Read, Seek};
use std::path::Path;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::Ntfs;
use serde::Serialize;

use crate::partition::{self, Fs, Partition, Window};
use crate::reader::ImageReader;
use crate::{ChunkStore, Error, Index};

/// The `State.ini` values that mean sysprep generalized the image
/// (`/generalize /oobe` and `/generalize /audit`).
const GENERALIZED: [&str; 2] = [
    "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
    "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT",
];
/// State.ini is a few hundred bytes; anything much larger is not it.
const STATE_INI_MAX: u64 = 64 << 10;

/// What to run on the reference PC before capturing it again.
pub const SYSPREP: &str = r"C:\Windows\System32\Sysprep\sysprep.exe /generalize /oobe /shutdown";

/// An image, as `netreset image show` tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub size: u64,
    /// Bytes in stored chunks: what a restore reads and may fetch.
    pub used: u64,
    /// Bytes wholly in free space of a filesystem: not stored, emptied by a restore.
    pub free: u64,
    pub chunk_size: u64,
    pub partitions: Vec<PartitionInfo>,
    /// The Windows partition's setup state, when one has it.
    pub windows: Option<WindowsState>,
    /// The Windows version and edition, from its SOFTWARE registry hive.
    pub version: Option<crate::hive::WindowsVersion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// `ntfs`, `fat`, `bitlocker` or `other`.
    pub fs: &'static str,
    pub esp: bool,
}

/// `Windows\Setup\State\State.ini` of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WindowsState {
    /// The partition it is on.
    pub partition: u32,
    /// Its `ImageState` value, as written.
    pub image_state: String,
    pub generalized: bool,
}

impl Inspection {
    /// Why the image cannot be staged with the KMS profile, if it cannot: it is not
    /// generalized (every reset would bring back the same CMID), or Windows is on a
    /// BitLocker volume (netreset cannot write into it).
    pub fn kms_refusal(&self, name: &str) -> Option<String> {
        if let Some(w) = self.windows.as_ref().filter(|w| !w.generalized) {
            return Some(format!(
                "image {name} is not generalized (partition {}: Windows\\Setup\\State\\State.ini says ImageState={}): \
                 every reset would bring back the same KMS client machine id, so the KMS count would not rise. \
                 Run `{SYSPREP}` on the reference PC, then import or capture it again",
                w.partition, w.image_state
            ));
        }
        let encrypted: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| p.fs == "bitlocker")
            .map(|p| p.number.to_string())
            .collect();
        if !encrypted.is_empty() && self.windows.is_none() {
            return Some(format!(
                "image {name} has BitLocker-encrypted partitions ({}): netreset cannot inject the KMS setup into \
                 an encrypted Windows; suspend or turn off BitLocker on the reference PC (manage-bde -off C:), \
                 then import or capture it again",
                encrypted.join(", ")
            ));
        }
        None
    }
}

/// Inspect image `name` (its `index`) through the chunks in `store`.
pub fn inspect(store: &ChunkStore, index: &Index, name: &str) -> Result<Inspection, Error> {
    let mut reader = ImageReader::new(store, index);
    let parts = match partition::partitions_in(&mut reader, Path::new(name)) {
        Ok(parts) => parts,
        Err(Error::Partitions { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut windows = None;
    let mut version = None;
    for p in partition::ntfs_partitions(&parts) {
        if version.is_none() {
            version = windows_version(Window::new(&mut reader, p));
        }
        if let Some(image_state) = state_ini(Window::new(&mut reader, p))? {
            windows = Some(WindowsState {
                partition: p.number,
                generalized: GENERALIZED.contains(&image_state.as_str()),
                image_state,
            });
            break;
        }
    }
    let layout = &index.layout;
    let chunk_size = u64::from(layout.chunk_size);
    Ok(Inspection {
        size: layout.total_size,
        used: layout.bytes_of(crate::RunKind::Data),
        free: layout.bytes_of(crate::RunKind::Free),
        chunk_size,
        partitions: parts.iter().map(info).collect(),
        windows,
        version,
    })
}

fn info(p: &Partition) -> PartitionInfo {
    PartitionInfo {
        number: p.number,
        start: p.start,
        len: p.len,
        fs: match p.fs {
            Fs::Ntfs => "ntfs",
            Fs::Fat => "fat",
            Fs::BitLocker => "bitlocker",
            Fs::Other => "other",
        },
        esp: p.esp,
    }
}

/// The `ImageState` of `Windows\Setup\State\State.ini` on the NTFS volume `fs`;
/// `None` when the volume has no such file (not a Windows partition) or cannot be
/// read as NTFS.
pub fn state_ini<T: Read + Seek>(mut fs: T) -> Result<Option<String>, Error> {
    match read_state_ini(&mut fs) {
        Ok(Some(bytes)) => Ok(parse_state_ini(&bytes)),
        // A volume the NTFS reader does not understand is no Windows we can judge.
        Ok(None) | Err(_) => Ok(None),
    }
}

fn read_state_ini<T: Read + Seek>(fs: &mut T) -> Result<Option<Vec<u8>>, ntfs::NtfsError> {
    let mut ntfs = Ntfs::new(fs)?;
    ntfs.read_upcase_table(fs)?;
    let Some(file) = find(&ntfs, fs, &["Windows", "Setup", "State", "State.ini"])? else {
        return Ok(None);
    };
    let Some(item) = file.data(fs, "") else {
        return Ok(None);
    };
    let item = item?;
    let attribute = item.to_attribute()?;
    if attribute.value_length() > STATE_INI_MAX {
        return Ok(None);
    }
    let mut value = attribute.value(fs)?.attach(fs);
    let mut bytes = Vec::new();
    if value.read_to_end(&mut bytes).is_err() {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// The file at `path` (names as the directory index matches them) of the NTFS
/// volume `ntfs`; `None` when a part is missing or the last is a directory.
fn find<'n, T: Read + Seek>(
    ntfs: &'n Ntfs,
    fs: &mut T,
    path: &[&str],
) -> Result<Option<ntfs::NtfsFile<'n>>, ntfs::NtfsError> {
    let mut file = ntfs.root_directory(fs)?;
    for name in path {
        let index = file.directory_index(fs)?;
        let mut finder = index.finder();
        let Some(entry) = NtfsFileNameIndex::find(&mut finder, ntfs, fs, name) else {
            return Ok(None);
        };
        let next = entry?.to_file(ntfs, fs)?;
        file = next;
    }
    Ok((!file.is_directory()).then_some(file))
}

/// The Windows version of the NTFS volume `fs`, from its SOFTWARE registry hive
/// (`Windows\System32\config\SOFTWARE`, read where the reader seeks, never whole);
/// `None` when it has none or it cannot be read.
pub fn windows_version<T: Read + Seek>(mut fs: T) -> Option<crate::hive::WindowsVersion> {
    let fs = &mut fs;
    let ntfs = {
        let mut ntfs = Ntfs::new(fs).ok()?;
        ntfs.read_upcase_table(fs).ok()?;
        ntfs
    };
    let file = find(&ntfs, fs, &["Windows", "System32", "config", "SOFTWARE"]).ok()??;
    let item = file.data(fs, "")?.ok()?;
    let attribute = item.to_attribute().ok()?;
    let value = attribute.value(fs).ok()?.attach(fs);
    crate::hive::windows_version(value).ok()?
}

/// `ImageState=` of State.ini's text: UTF-16LE with a byte order mark (as Windows
/// writes it) or 8-bit text.
pub fn parse_state_ini(bytes: &[u8]) -> Option<String> {
    let text = match bytes {
        [0xff, 0xfe, rest @ ..] => String::from_utf16_lossy(
            &rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        ),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("ImageState")
            .then(|| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap()
    }

    fn imported(disk: &[u8]) -> (tempfile::TempDir, ChunkStore, Index) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, disk).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let index = crate::import(&store, &file, 1 << 16, |_| {}).unwrap().index;
        (dir, store, index)
    }

    #[test]
    fn state_ini_is_read_as_windows_writes_it_and_as_plain_text() {
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(
                "[State]\r\nImageState=IMAGE_STATE_COMPLETE\r\n"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        assert_eq!(
            parse_state_ini(&utf16).as_deref(),
            Some("IMAGE_STATE_COMPLETE")
        );
        assert_eq!(
            parse_state_ini(b"[State]\nimagestate = IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE\n")
                .as_deref(),
            Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
        );
        assert_eq!(parse_state_ini(b"[State]\nImageState=\n"), None);
        assert_eq!(parse_state_ini(b"\xff\xfe\x00"), None);
        assert_eq!(parse_state_ini(b""), None);
    }

    #[test]
    fn a_generalized_image_passes_and_a_completed_one_is_refused_for_kms_with_sysprep() {
        let (_d, store, index) = imported(&fixture("windows-generalized.img.zst"));
        let seen = inspect(&store, &index, "golden").unwrap();
        assert_eq!(
            seen.windows,
            Some(WindowsState {
                partition: 1,
                image_state: "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE".into(),
                generalized: true,
            })
        );
        assert_eq!(seen.partitions.len(), 1);
        assert_eq!(seen.partitions[0].fs, "ntfs");
        assert_eq!(seen.size, 8 << 20);
        assert!(seen.used > 0 && seen.free > 0, "{seen:?}");
        assert!(seen.used + seen.free <= seen.size, "{seen:?}");
        assert_eq!(seen.kms_refusal("golden"), None);

        let (_d, store, index) = imported(&fixture("windows-complete.img.zst"));
        let seen = inspect(&store, &index, "used").unwrap();
        assert_eq!(seen.windows.as_ref().map(|w| w.generalized), Some(false));
        let why = seen.kms_refusal("used").expect("refused");
        assert!(why.contains("ImageState=IMAGE_STATE_COMPLETE"), "{why}");
        assert!(why.contains("sysprep.exe /generalize /oobe"), "{why}");
    }

    #[test]
    fn a_bitlocker_volume_is_reported_and_refused_for_kms() {
        let mut disk = fixture("windows-generalized.img.zst");
        // The partition's boot sector as BitLocker writes it: OEM id -FVE-FS-.
        disk[2048 * 512 + 3..2048 * 512 + 11].copy_from_slice(b"-FVE-FS-");
        let (_d, store, index) = imported(&disk);
        let seen = inspect(&store, &index, "locked").unwrap();
        assert_eq!(seen.partitions[0].fs, "bitlocker");
        assert_eq!(seen.windows, None);
        let why = seen.kms_refusal("locked").expect("refused");
        assert!(why.contains("BitLocker"), "{why}");
    }

    #[test]
    fn a_disk_without_windows_or_partitions_has_no_windows_state_and_is_not_refused() {
        let (_d, store, index) = imported(&vec![0x5a; 3 << 16]);
        let seen = inspect(&store, &index, "raw").unwrap();
        assert!(seen.partitions.is_empty());
        assert_eq!(seen.windows, None);
        assert_eq!(seen.kms_refusal("raw"), None);
        // Garbage where the NTFS boot sector says NTFS: unreadable, not a panic.
        let mut disk = fixture("windows-complete.img.zst");
        let part = 2048 * 512;
        for b in &mut disk[part + 512..part + (1 << 20)] {
            *b = 0xa5;
        }
        let (_d, store, index) = imported(&disk);
        assert_eq!(inspect(&store, &index, "broken").unwrap().windows, None);
    }
}
