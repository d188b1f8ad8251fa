//! A staged image: a base image's index, named by its id, plus the files injected
//! into the restored disk. Its id is the BLAKE3 hash of its encoding, so a station
//! that fetches a staged image by id can check it got exactly that; the index it
//! names is fetched (and checked) by its own id, once for every staging of it.
//! Staging costs the size of the injection set, never the size of the image.
//!
//! Encoding (little endian): magic `NRSTG\0\0\0`, u32 version (2), u8 profile,
//! u16 + bytes base image name, u16 + bytes FAT label, u8 Windows filesystem
//! (0 none, 1 NTFS, 2 FAT), index id [32], u32 file count, then per file:
//! u8 target, u16 + bytes path, u32 + bytes content.

use crate::{ChunkId, Error};

const MAGIC: &[u8; 8] = b"NRSTG\0\0\0";
pub const STAGED_VERSION: u32 = 2;
/// No staged image is larger than this: 64 files of at most 4 MiB.
pub const MAX_STAGED_BYTES: u64 = 256 << 20;
const MAX_FILE_BYTES: usize = 4 << 20;
const MAX_FILES: u32 = 64;

/// What a staged image does to Windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A reset to the image, nothing injected.
    Plain,
    /// The KMS settings and the agent injected.
    Kms,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        match s {
            "plain" => Ok(Profile::Plain),
            "kms" => Ok(Profile::Kms),
            _ => Err(format!(
                "unknown profile {s:?} (expected \"kms\" or \"plain\")"
            )),
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Plain => "plain",
            Profile::Kms => "kms",
        })
    }
}

/// What holds Windows in an image, as staging found it: the partition with
/// `Windows/Setup/Scripts` on FAT (test and simulator images), else NTFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowsFs {
    /// No partition table, or neither NTFS nor FAT with that folder.
    None,
    Ntfs,
    Fat,
}

/// Which filesystem of the restored disk a file goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Windows partition: a FAT partition with `Windows/Setup/Scripts` (written
    /// in-process), else the NTFS partition with `Windows/System32` (ntfscp).
    Windows,
    /// The FAT partition labelled [`Staged::fat_label`], or the EFI system partition
    /// when that is empty; written in-process.
    Fat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectFile {
    pub target: Target,
    /// Relative, '/'-separated, no `.`/`..`/empty components.
    pub path: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub profile: Profile,
    pub base: String,
    pub fat_label: String,
    pub windows_fs: WindowsFs,
    /// The id of the base image's index ([`crate::Index::id`]).
    pub index: ChunkId,
    pub files: Vec<InjectFile>,
}

/// The KMS settings a staged image carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsSettings {
    /// A host name or IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
    pub windows: bool,
    pub office: bool,
}

/// Where Windows runs SetupComplete.cmd from, and where the agent and station.json
/// are put beside it.
pub const SCRIPTS_DIR: &str = "Windows/Setup/Scripts";
/// The per-station file on the FAT partition (station.json without the token).
pub const FAT_STATION_JSON: &str = "netreset/station.json";

const SETUP_COMPLETE: &str = include_str!("../windows/SetupComplete.cmd");
const AGENT: &str = include_str!("../windows/netreset-agent.ps1");

/// Check a KMS host the way the templates need it: it goes into a cmd script bare.
pub fn check_kms_host(host: &str) -> Result<(), String> {
    let bracketed_v6 = host.len() > 2
        && host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    let name = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if bracketed_v6 || name {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name, an IPv4 address or a bracketed IPv6 address"
        ))
    }
}

/// Render a template: `{{name}}` is replaced by its value, line ends become CRLF
/// (cmd.exe needs them). An unknown placeholder is an error, so a template and the
/// renderer cannot drift apart silently.
fn render(template: &str, values: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| Error::Template("an unclosed {{".into()))?;
        let name = &after[..close];
        let value = values
            .iter()
            .find(|(k, _)| *k == name)
            .ok_or_else(|| Error::Template(format!("unknown placeholder {{{{{name}}}}}")))?;
        out.push_str(value.1);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(crlf(&out))
}

fn crlf(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

impl Staged {
    /// Stage the image `base`, whose index has the id `index`, with `profile`.
    /// `windows_fs` is what the image holds Windows in (see [`crate::inject::image_windows_fs`]).
    pub fn new(
        base: &str,
        index: ChunkId,
        profile: Profile,
        kms: Option<&KmsSettings>,
        fat_label: &str,
        windows_fs: WindowsFs,
    ) -> Result<Staged, Error> {
        if profile == Profile::Kms && windows_fs == WindowsFs::None {
            return Err(Error::BadStaged(format!(
                "image {base} has no Windows partition (NTFS, or FAT with Windows/Setup/Scripts): \
                 the kms profile has nowhere to put SetupComplete.cmd"
            )));
        }
        let files = match (profile, kms) {
            (Profile::Plain, _) => Vec::new(),
            (Profile::Kms, None) => {
                return Err(Error::Template(
                    "the kms profile needs the [kms] settings (host, port, families)".into(),
                ))
            }
            (Profile::Kms, Some(kms)) => {
                check_kms_host(&kms.host).map_err(Error::Template)?;
                let port = kms.port.to_string();
                let flag = |on: bool| if on { "1" } else { "0" };
                let values = [
                    ("kms_host", kms.host.as_str()),
                    ("kms_port", port.as_str()),
                    ("windows", flag(kms.windows)),
                    ("office", flag(kms.office)),
                ];
                vec![
                    InjectFile {
                        target: Target::Windows,
                        path: format!("{SCRIPTS_DIR}/SetupComplete.cmd"),
                        data: render(SETUP_COMPLETE, &values)?,
                    },
                    InjectFile {
                        target: Target::Windows,
                        path: format!("{SCRIPTS_DIR}/netreset-agent.ps1"),
                        // The agent has no placeholders: it reads station.json.
                        data: crlf(AGENT),
                    },
                ]
            }
        };
        let staged = Staged {
            profile,
            base: base.to_owned(),
            fat_label: fat_label.to_owned(),
            windows_fs,
            index,
            files,
        };
        staged.check()?;
        Ok(staged)
    }

    /// The per-station files injected beside the staged set: station.json on the
    /// Windows partition (for the agent; SetupComplete.cmd moves it somewhere only
    /// SYSTEM reads), and a copy without the token on the FAT partition, so the
    /// restore environment and an admin can see what a disk was last restored to
    /// without NTFS tools. A plain reset injects nothing.
    pub fn station_files(&self, station_json: &[u8]) -> Result<Vec<InjectFile>, Error> {
        if self.profile == Profile::Plain {
            return Ok(Vec::new());
        }
        let mut public: serde_json::Value = serde_json::from_slice(station_json)
            .map_err(|e| Error::BadStaged(format!("station.json from the server: {e}")))?;
        match public.as_object_mut() {
            Some(fields) => fields.remove("token"),
            None => {
                return Err(Error::BadStaged(
                    "station.json from the server is not an object".into(),
                ))
            }
        };
        Ok(vec![
            InjectFile {
                target: Target::Windows,
                path: format!("{SCRIPTS_DIR}/station.json"),
                data: station_json.to_vec(),
            },
            InjectFile {
                target: Target::Fat,
                path: FAT_STATION_JSON.into(),
                data: serde_json::to_vec_pretty(&public).expect("JSON value"),
            },
        ])
    }

    /// Whether a restore of this staged image injects per-station files.
    pub fn needs_station_json(&self) -> bool {
        self.profile != Profile::Plain
    }

    fn check(&self) -> Result<(), Error> {
        if self.files.len() > MAX_FILES as usize {
            return Err(Error::BadStaged(format!(
                "{} files to inject",
                self.files.len()
            )));
        }
        for f in &self.files {
            check_inject_path(&f.path)?;
            if f.data.len() > MAX_FILE_BYTES {
                return Err(Error::BadStaged(format!(
                    "{}: {} bytes (at most {MAX_FILE_BYTES})",
                    f.path,
                    f.data.len()
                )));
            }
        }
        if self.fat_label.len() > 11 || !self.fat_label.is_ascii() {
            return Err(Error::BadStaged(format!(
                "FAT label {:?}: at most 11 ASCII characters",
                self.fat_label
            )));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        fn short(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s);
        }
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&STAGED_VERSION.to_le_bytes());
        out.push(match self.profile {
            Profile::Plain => 0,
            Profile::Kms => 1,
        });
        short(&mut out, self.base.as_bytes());
        short(&mut out, self.fat_label.as_bytes());
        out.push(match self.windows_fs {
            WindowsFs::None => 0,
            WindowsFs::Ntfs => 1,
            WindowsFs::Fat => 2,
        });
        out.extend_from_slice(&self.index.0);
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            out.push(match f.target {
                Target::Windows => 0,
                Target::Fat => 1,
            });
            short(&mut out, f.path.as_bytes());
            out.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.data);
        }
        out
    }

    /// Decode and check a staged image. With `expect`, its hash must be that id.
    pub fn decode(bytes: &[u8], expect: Option<&ChunkId>) -> Result<Staged, Error> {
        if bytes.len() as u64 > MAX_STAGED_BYTES {
            return Err(Error::BadStaged(format!(
                "{} bytes, more than the {MAX_STAGED_BYTES} a staged image may have",
                bytes.len()
            )));
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(Error::BadStaged(
                "not a netreset staged image (bad magic)".into(),
            ));
        }
        let version = r.u32()?;
        if version != STAGED_VERSION {
            return Err(Error::BadStaged(format!(
                "unknown format version {version} (this build reads version {STAGED_VERSION})"
            )));
        }
        let profile = match r.u8()? {
            0 => Profile::Plain,
            1 => Profile::Kms,
            p => return Err(Error::BadStaged(format!("unknown profile {p}"))),
        };
        let base = r.string()?;
        let fat_label = r.string()?;
        let windows_fs = match r.u8()? {
            0 => WindowsFs::None,
            1 => WindowsFs::Ntfs,
            2 => WindowsFs::Fat,
            w => return Err(Error::BadStaged(format!("unknown Windows filesystem {w}"))),
        };
        let index = ChunkId(r.take(32)?.try_into().expect("32 bytes"));
        let count = r.u32()?;
        if count > MAX_FILES {
            return Err(Error::BadStaged(format!("{count} files to inject")));
        }
        let mut files = Vec::new();
        for _ in 0..count {
            let target = match r.u8()? {
                0 => Target::Windows,
                1 => Target::Fat,
                t => return Err(Error::BadStaged(format!("unknown injection target {t}"))),
            };
            let path = r.string()?;
            let len = r.u32()? as usize;
            if len > MAX_FILE_BYTES {
                return Err(Error::BadStaged(format!("{path}: {len} bytes")));
            }
            let data = r.take(len)?.to_vec();
            files.push(InjectFile { target, path, data });
        }
        if r.at != bytes.len() {
            return Err(Error::BadStaged(format!(
                "{} bytes of trailing garbage",
                bytes.len() - r.at
            )));
        }
        if let Some(want) = expect {
            let got = ChunkId::of(bytes);
            if got != *want {
                return Err(Error::BadStaged(format!(
                    "corrupt: its hash is {got}, not the requested {want}"
                )));
            }
        }
        let staged = Staged {
            profile,
            base,
            fat_label,
            windows_fs,
            index,
            files,
        };
        staged.check()?;
        Ok(staged)
    }

    /// The staged id: the hash of the encoding.
    pub fn id(&self) -> ChunkId {
        ChunkId::of(&self.encode())
    }
}

/// A path inside a filesystem: relative, '/'-separated, no empty, `.` or `..`
/// components, no backslashes or NULs, at most 240 bytes.
pub fn check_inject_path(path: &str) -> Result<(), Error> {
    let ok = !path.is_empty()
        && path.len() <= 240
        && !path.contains(['\\', '\0', ':'])
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::BadStaged(format!(
            "injection path {path:?} is not a relative path inside the filesystem"
        )))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> Error {
        Error::BadStaged(format!(
            "truncated: {} bytes, ending inside the field at byte {}",
            self.bytes.len(),
            self.at
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, Error> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        let raw = self.take(usize::from(len))?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::BadStaged("a name is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ChunkId {
        ChunkId::of(b"an index")
    }

    fn kms() -> KmsSettings {
        KmsSettings {
            host: "kms.school.example".into(),
            port: 1688,
            windows: true,
            office: false,
        }
    }

    /// The image "win11" (Windows on NTFS) staged with the kms profile.
    fn kms_staged(settings: &KmsSettings, fat_label: &str) -> Staged {
        Staged::new(
            "win11",
            index(),
            Profile::Kms,
            Some(settings),
            fat_label,
            WindowsFs::Ntfs,
        )
        .unwrap()
    }

    #[test]
    fn kms_staging_renders_the_settings_into_setupcomplete_with_crlf() {
        let s = kms_staged(&kms(), "");
        let cmd = String::from_utf8(s.files[0].data.clone()).unwrap();
        assert_eq!(s.files[0].path, "Windows/Setup/Scripts/SetupComplete.cmd");
        assert!(cmd.contains("kms.school.example"), "{cmd}");
        assert!(cmd.contains("1688"), "{cmd}");
        assert!(!cmd.contains("{{"), "every placeholder is filled");
        assert!(cmd.contains("\r\n"), "CRLF line ends");
        assert!(!cmd.replace("\r\n", "").contains('\n'), "no bare LF");
    }

    #[test]
    fn encode_decode_round_trips_and_the_id_checks_the_bytes() {
        let s = kms_staged(&kms(), "NRCONF");
        let bytes = s.encode();
        let id = s.id();
        assert_eq!(Staged::decode(&bytes, Some(&id)).unwrap(), s);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = Staged::decode(&flipped, Some(&id)).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn the_id_changes_with_the_injection_set_and_not_without() {
        let a = kms_staged(&kms(), "");
        let b = kms_staged(&kms(), "");
        let mut other = kms();
        other.port = 1700;
        let c = kms_staged(&other, "");
        let plain =
            Staged::new("win11", index(), Profile::Plain, None, "", WindowsFs::Ntfs).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_ne!(a.id(), plain.id());
        assert!(plain.files.is_empty());
    }

    #[test]
    fn truncated_unknown_version_and_oversized_encodings_are_clear_errors() {
        let bytes = Staged::new("w", index(), Profile::Plain, None, "", WindowsFs::Ntfs)
            .unwrap()
            .encode();
        for cut in [0, 5, 12, 20, bytes.len() - 1] {
            let err = Staged::decode(&bytes[..cut], None).unwrap_err().to_string();
            assert!(
                err.contains("truncated") || err.contains("magic"),
                "{cut}: {err}"
            );
        }
        let mut v9 = bytes.clone();
        v9[8] = 9;
        let err = Staged::decode(&v9, None).unwrap_err().to_string();
        assert!(err.contains("unknown format version 9"), "{err}");
        let huge = vec![0u8; MAX_STAGED_BYTES as usize + 1];
        let err = Staged::decode(&huge, None).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn traversal_paths_and_bad_hosts_are_refused() {
        for p in ["../x", "a/../b", "/abs", "a//b", "a\\b", "C:x", ""] {
            assert!(check_inject_path(p).is_err(), "{p}");
        }
        assert!(check_inject_path("Windows/Setup/Scripts/x.cmd").is_ok());
        for h in ["kms & del", "-x", "", "a b", "[zz]"] {
            assert!(check_kms_host(h).is_err(), "{h}");
        }
        for h in ["kms1", "10.0.0.5", "[fe80::1]", "kms.school.example"] {
            assert!(check_kms_host(h).is_ok(), "{h}");
        }
    }

    #[test]
    fn kms_staging_of_an_image_without_a_windows_partition_is_refused() {
        let err = Staged::new(
            "blank",
            index(),
            Profile::Kms,
            Some(&kms()),
            "",
            WindowsFs::None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no Windows partition"), "{err}");
        assert!(Staged::new("blank", index(), Profile::Plain, None, "", WindowsFs::None).is_ok());
    }

    #[test]
    fn render_refuses_unknown_placeholders() {
        assert!(render("{{nope}}", &[]).is_err());
        assert!(render("{{open", &[]).is_err());
        assert_eq!(render("a{{x}}b\n", &[("x", "1")]).unwrap(), b"a1b\r\n");
    }
}
