//! A read-only reader of Windows registry hives (the `regf` format), enough to read
//! a few values of one key: `image show` reads `Microsoft\Windows NT\CurrentVersion`
//! of the SOFTWARE hive for the Windows version and edition. It seeks to the cells
//! it needs (a SOFTWARE hive is 50-200 MB) and trusts nothing in the file: every
//! offset is bounded by the hive's size, every count and size capped, so a broken or
//! hostile hive gives `None` or an error, never a panic or a huge allocation.
//!
//! Format (as documented by the libyal project's "Windows NT Registry File (REGF)"
//! notes and Microsoft's hive documentation): a 4096-byte base block (`regf`, the
//! root key's cell offset at 0x24, the hive bins' size at 0x28), then hive bins of
//! cells; a cell offset counts from the first bin; a cell is an i32 size (negative
//! when in use) and its data: a key (`nk`), a value (`vk`), a subkey list (`lf`,
//! `lh`, `li`, or `ri` of lists), a value list (offsets), or value data.

use std::io::{Read, Seek, SeekFrom};

/// Where the hive bins start.
const BINS: u64 = 4096;
/// The largest cell read: keys, values and lists are far smaller; value data this
/// large is not a version string.
const MAX_CELL: u32 = 1 << 20;
/// Most subkeys or values of one key looked at.
const MAX_ENTRIES: u32 = 1 << 16;
/// `nk` flag: the name is 8-bit (Latin-1), not UTF-16LE.
const KEY_COMP_NAME: u16 = 0x20;
/// `vk` flag: the name is 8-bit.
const VALUE_COMP_NAME: u16 = 0x1;

/// A hive that is not one, or broken where it was read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("registry hive: {0}")]
pub struct HiveError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, HiveError> {
    Err(HiveError(why.into()))
}

/// A value's data, as far as this reader tells types apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// REG_SZ or REG_EXPAND_SZ, up to the first NUL.
    Str(String),
    /// REG_DWORD (little endian).
    Dword(u32),
    /// Anything else: its type.
    Other(u32),
}

/// An open hive.
pub struct Hive<R> {
    inner: R,
    /// Bytes of hive bins (from the base block, bounded by the file).
    bins_len: u64,
    root: u32,
}

/// A key: its cell's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(u32);

impl<R: Read + Seek> Hive<R> {
    /// Check the base block of `inner` and find the root key.
    pub fn open(mut inner: R) -> Result<Hive<R>, HiveError> {
        let io = |e: std::io::Error| HiveError(format!("reading the base block: {e}"));
        let mut base = [0u8; 512];
        inner.seek(SeekFrom::Start(0)).map_err(io)?;
        inner.read_exact(&mut base).map_err(io)?;
        if &base[..4] != b"regf" {
            return bad("no regf signature");
        }
        let len = inner.seek(SeekFrom::End(0)).map_err(io)?;
        let root = u32_at(&base, 0x24);
        let declared = u64::from(u32_at(&base, 0x28));
        let bins_len = declared.min(len.saturating_sub(BINS));
        let hive = Hive {
            inner,
            bins_len,
            root,
        };
        if hive.bins_len == 0 {
            return bad("no hive bins");
        }
        Ok(hive)
    }

    /// The root key.
    pub fn root(&self) -> Key {
        Key(self.root)
    }

    /// The key at `path` below `from` (names compared as Windows does, ignoring
    /// ASCII case), if there is one.
    pub fn key(&mut self, from: Key, path: &[&str]) -> Result<Option<Key>, HiveError> {
        let mut key = from;
        for name in path {
            match self.subkey(key, name)? {
                Some(next) => key = next,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    /// Value `name` of `key` (`""`: the default value).
    pub fn value(&mut self, key: Key, name: &str) -> Result<Option<Value>, HiveError> {
        let nk = self.key_cell(key)?;
        let count = u32_at(&nk, 0x24).min(MAX_ENTRIES);
        if count == 0 {
            return Ok(None);
        }
        let list = self.cell(u32_at(&nk, 0x28))?;
        if list.len() < count as usize * 4 {
            return bad("a value list shorter than its count");
        }
        for i in 0..count as usize {
            let vk = self.cell(u32_at(&list, i * 4))?;
            if vk.len() < 20 || &vk[..2] != b"vk" {
                return bad("a value that is not a vk cell");
            }
            let name_len = usize::from(u16_at(&vk, 2));
            let flags = u16_at(&vk, 16);
            let Some(raw) = vk.get(20..20 + name_len) else {
                return bad("a value name past its cell");
            };
            if !same_name(&decode_name(raw, flags & VALUE_COMP_NAME != 0), name) {
                continue;
            }
            return self.value_data(&vk).map(Some);
        }
        Ok(None)
    }

    fn value_data(&mut self, vk: &[u8]) -> Result<Value, HiveError> {
        let size = u32_at(vk, 4);
        let kind = u32_at(vk, 12);
        // High bit: the data (at most 4 bytes) is the offset field itself.
        let data = if size & 0x8000_0000 != 0 {
            let n = (size & 0x7fff_ffff).min(4) as usize;
            vk[8..8 + n].to_vec()
        } else {
            let mut cell = self.cell(u32_at(vk, 8))?;
            if size as usize > cell.len() {
                return bad("value data longer than its cell");
            }
            cell.truncate(size as usize);
            cell
        };
        Ok(match kind {
            1 | 2 => Value::Str(utf16_until_nul(&data)),
            4 if data.len() >= 4 => Value::Dword(u32_at(&data, 0)),
            other => Value::Other(other),
        })
    }

    fn subkey(&mut self, key: Key, name: &str) -> Result<Option<Key>, HiveError> {
        let nk = self.key_cell(key)?;
        if u32_at(&nk, 0x14) == 0 {
            return Ok(None);
        }
        self.find_in_list(u32_at(&nk, 0x1c), name, 0)
    }

    /// Search the subkey list at `offset` (an `ri` holds lists, one level deep).
    fn find_in_list(
        &mut self,
        offset: u32,
        name: &str,
        depth: u8,
    ) -> Result<Option<Key>, HiveError> {
        let list = self.cell(offset)?;
        if list.len() < 4 {
            return bad("a subkey list too short");
        }
        let count = usize::from(u16_at(&list, 2)).min(MAX_ENTRIES as usize);
        let (step, nested) = match &list[..2] {
            b"lf" | b"lh" => (8, false),
            b"li" => (4, false),
            b"ri" if depth == 0 => (4, true),
            _ => return bad("not a subkey list"),
        };
        if list.len() < 4 + count * step {
            return bad("a subkey list shorter than its count");
        }
        for i in 0..count {
            let target = u32_at(&list, 4 + i * step);
            if nested {
                if let Some(k) = self.find_in_list(target, name, depth + 1)? {
                    return Ok(Some(k));
                }
                continue;
            }
            let nk = self.key_cell(Key(target))?;
            let len = usize::from(u16_at(&nk, 0x48));
            let Some(raw) = nk.get(0x4c..0x4c + len) else {
                return bad("a key name past its cell");
            };
            if same_name(&decode_name(raw, u16_at(&nk, 2) & KEY_COMP_NAME != 0), name) {
                return Ok(Some(Key(target)));
            }
        }
        Ok(None)
    }

    fn key_cell(&mut self, key: Key) -> Result<Vec<u8>, HiveError> {
        let nk = self.cell(key.0)?;
        if nk.len() < 0x4c || &nk[..2] != b"nk" {
            return bad("a key that is not an nk cell");
        }
        Ok(nk)
    }

    /// The data of the cell at `offset` (from the first hive bin).
    fn cell(&mut self, offset: u32) -> Result<Vec<u8>, HiveError> {
        let at = u64::from(offset);
        if at.saturating_add(4) > self.bins_len {
            return bad(format!("cell offset {offset:#x} past the hive bins"));
        }
        let io = |e: std::io::Error| HiveError(format!("cell {offset:#x}: {e}"));
        self.inner.seek(SeekFrom::Start(BINS + at)).map_err(io)?;
        let mut size = [0u8; 4];
        self.inner.read_exact(&mut size).map_err(io)?;
        let size = i32::from_le_bytes(size);
        // In use: negative. A free cell is no key, value or list.
        let len = size.checked_neg().filter(|&n| n >= 4).map(|n| n as u32 - 4);
        let Some(len) = len.filter(|&n| n <= MAX_CELL) else {
            return bad(format!("cell {offset:#x} has size {size}"));
        };
        if at + 4 + u64::from(len) > self.bins_len {
            return bad(format!("cell {offset:#x} runs past the hive bins"));
        }
        let mut data = vec![0u8; len as usize];
        self.inner.read_exact(&mut data).map_err(io)?;
        Ok(data)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn decode_name(raw: &[u8], latin1: bool) -> String {
    if latin1 {
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        utf16_until_nul(raw)
    }
}

fn utf16_until_nul(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The Windows of a SOFTWARE hive, from `Microsoft\Windows NT\CurrentVersion`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WindowsVersion {
    /// `ProductName` as written (Windows 11 still writes "Windows 10 ..." there).
    pub product_name: Option<String>,
    /// `EditionID`: Education, Professional, Enterprise, ...
    pub edition: Option<String>,
    /// `DisplayVersion` (22H2, 23H2), or `ReleaseId` on older Windows 10.
    pub display_version: Option<String>,
    /// `CurrentBuild`, and `UBR` (the update build revision).
    pub build: Option<u32>,
    pub ubr: Option<u32>,
}

impl WindowsVersion {
    /// "Windows 11 Education 23H2 (build 22631.2861)": the product from the build
    /// number (22000 and later are Windows 11), the edition, the version.
    pub fn describe(&self) -> String {
        let product = match (&self.product_name, self.build) {
            (Some(p), Some(b)) if b >= 22000 && p.starts_with("Windows 10") => {
                p.replacen("Windows 10", "Windows 11", 1)
            }
            (Some(p), _) => p.clone(),
            (None, _) => "Windows".to_owned(),
        };
        let mut out = product;
        if let Some(edition) = &self.edition {
            if !out.contains(edition.as_str()) {
                out.push(' ');
                out.push_str(edition);
            }
        }
        if let Some(v) = &self.display_version {
            out.push(' ');
            out.push_str(v);
        }
        match (self.build, self.ubr) {
            (Some(b), Some(u)) => out.push_str(&format!(" (build {b}.{u})")),
            (Some(b), None) => out.push_str(&format!(" (build {b})")),
            _ => {}
        }
        out
    }
}

/// The Windows version in the SOFTWARE hive `hive`; `None` when it has no
/// `Microsoft\Windows NT\CurrentVersion` key.
pub fn windows_version<R: Read + Seek>(hive: R) -> Result<Option<WindowsVersion>, HiveError> {
    let mut hive = Hive::open(hive)?;
    let root = hive.root();
    let Some(key) = hive.key(root, &["Microsoft", "Windows NT", "CurrentVersion"])? else {
        return Ok(None);
    };
    let mut text = |name: &str| -> Result<Option<String>, HiveError> {
        Ok(match hive.value(key, name)? {
            Some(Value::Str(s)) if !s.is_empty() => Some(s),
            _ => None,
        })
    };
    let product_name = text("ProductName")?;
    let edition = text("EditionID")?;
    let display_version = match text("DisplayVersion")? {
        Some(v) => Some(v),
        None => text("ReleaseId")?,
    };
    let build = text("CurrentBuild")?.and_then(|b| b.trim().parse().ok());
    let ubr = match hive.value(key, "UBR")? {
        Some(Value::Dword(u)) => Some(u),
        _ => None,
    };
    Ok(Some(WindowsVersion {
        product_name,
        edition,
        display_version,
        build,
        ubr,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A SOFTWARE hive as hivex (libhivex-bin) writes it: tests/data/make-hive.sh.
    const FIXTURE: &[u8] = include_bytes!("../tests/data/SOFTWARE");

    #[test]
    fn the_version_and_edition_are_read_from_a_hive_hivex_wrote() {
        let v = windows_version(Cursor::new(FIXTURE)).unwrap().unwrap();
        assert_eq!(v.product_name.as_deref(), Some("Windows 10 Education"));
        assert_eq!(v.edition.as_deref(), Some("Education"));
        assert_eq!(v.display_version.as_deref(), Some("23H2"));
        assert_eq!((v.build, v.ubr), (Some(22631), Some(2861)));
        assert_eq!(v.describe(), "Windows 11 Education 23H2 (build 22631.2861)");
    }

    #[test]
    fn names_are_matched_ignoring_case_and_a_missing_key_is_none() {
        let mut hive = Hive::open(Cursor::new(FIXTURE)).unwrap();
        let root = hive.root();
        let key = hive
            .key(root, &["microsoft", "WINDOWS NT", "currentversion"])
            .unwrap()
            .unwrap();
        assert_eq!(
            hive.value(key, "editionid").unwrap(),
            Some(Value::Str("Education".into()))
        );
        assert_eq!(hive.value(key, "NoSuchValue").unwrap(), None);
        assert_eq!(hive.key(root, &["Microsoft", "Office"]).unwrap(), None);
    }

    #[test]
    fn a_broken_or_hostile_hive_is_an_error_never_a_panic() {
        assert!(windows_version(Cursor::new(b"not a hive".to_vec())).is_err());
        assert!(windows_version(Cursor::new(vec![0u8; 8192])).is_err());
        // Every byte of the fixture's bins flipped in turn, a stride at a time: each
        // read ends in a value, None or an error.
        for at in (4096..FIXTURE.len()).step_by(7) {
            let mut broken = FIXTURE.to_vec();
            broken[at] ^= 0xff;
            let _ = windows_version(Cursor::new(broken));
        }
        // The root key's offset past the end.
        let mut broken = FIXTURE.to_vec();
        broken[0x24..0x28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(windows_version(Cursor::new(broken)).is_err());
    }
}
