//! Tokens stations carry, all derived from one server secret (`data_dir/secret`,
//! 32 random bytes made at first start, mode 0600), so nothing per token is stored:
//!
//! - the agent token of a station: keyed BLAKE3 of its MAC and of the reset it came
//!   with (an HMAC of the MAC under a server secret), injected
//!   through station.json; each reset makes a new one, so a token read off a disk is
//!   worthless after the next reset;
//! - a per-restore token: `{expiry}.{mac of station, staged image and expiry}`,
//!   handed to the restore environment on the kernel command line; it is good for
//!   that station, that staged image and until the expiry only.
//!
//! BLAKE3's keyed mode is a MAC (a PRF under the key); `blake3::Hash` compares in
//! constant time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use pxe::MacAddr;

#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Read `data_dir/secret`, or make it when it does not exist yet.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Secret> {
        let path = data_dir.join("secret");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: expected 32 bytes, found {}; remove it to make a new one (stations then need new staged images)",
                        path.display(),
                        bytes.len()
                    )
                })?;
                Ok(Secret(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| anyhow::anyhow!("no random bytes from the system: {e}"))?;
                let tmp = data_dir.join(".secret.tmp");
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                out.write_all(&key)?;
                out.sync_all()?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Ok(Secret(key))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    #[cfg(test)]
    pub fn fixed(byte: u8) -> Secret {
        Secret([byte; 32])
    }

    fn mac(&self, message: &str) -> blake3::Hash {
        blake3::keyed_hash(&self.0, message.as_bytes())
    }

    /// The agent token of `station` after the reset numbered `generation`: every
    /// reset makes a new one.
    pub fn agent_token(&self, station: MacAddr, generation: u64) -> String {
        self.mac(&format!("netreset agent v1 {station} {generation}"))
            .to_hex()
            .to_string()
    }

    /// Whether `token` is the agent token of `station` after reset `generation`
    /// (constant-time compare).
    pub fn check_agent_token(&self, token: &str, station: MacAddr, generation: u64) -> bool {
        blake3::Hash::from_hex(token)
            .is_ok_and(|tag| tag == self.mac(&format!("netreset agent v1 {station} {generation}")))
    }

    /// A restore token for `station` and the staged image `staged`, valid until
    /// `expires` (Unix seconds).
    pub fn restore_token(&self, station: MacAddr, staged: &str, expires: u64) -> String {
        let tag = self.mac(&format!("netreset restore v1 {station} {staged} {expires}"));
        format!("{expires}.{}", tag.to_hex())
    }

    /// The token the members of restore wave `wave` ask each other for chunks with.
    pub fn wave_token(&self, wave: u64) -> String {
        self.mac(&format!("netreset wave v1 {wave}"))
            .to_hex()
            .to_string()
    }

    /// Whether `token` is a restore token for `station` and `staged` that has not
    /// expired at `now` (Unix seconds).
    pub fn check_restore_token(
        &self,
        token: &str,
        station: MacAddr,
        staged: &str,
        now: u64,
    ) -> bool {
        self.restore_token_expiry(token, station, staged)
            .is_some_and(|expires| now < expires)
    }

    /// The expiry of `token` when it is a genuine restore token for `station` and
    /// `staged`, expired or not.
    pub fn restore_token_expiry(&self, token: &str, station: MacAddr, staged: &str) -> Option<u64> {
        let (expires, tag) = token.split_once('.')?;
        let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), blake3::Hash::from_hex(tag)) else {
            return None;
        };
        let want = self.mac(&format!("netreset restore v1 {station} {staged} {expires}"));
        // Hash equality is constant time.
        (want == tag).then_some(expires)
    }
}

/// The admin token of the API, kept as its hash: requests are checked by hashing
/// what they carry and comparing hashes in constant time. Never logged.
#[derive(Clone)]
pub struct AdminToken(blake3::Hash);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(blake3::hash(token.as_bytes()))
    }

    /// From the configuration: `api.token`, or the token file, made with a random
    /// token (mode 0600) when it does not exist yet.
    pub fn load(api: &crate::config::ApiConfig) -> anyhow::Result<AdminToken> {
        let path = match api {
            crate::config::ApiConfig::Token(t) => return Ok(AdminToken::new(t)),
            crate::config::ApiConfig::File(path) => path,
        };
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().len() >= 16 => Ok(AdminToken::new(text.trim())),
            Ok(_) => anyhow::bail!(
                "{}: the admin token is shorter than 16 characters",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw)
                    .map_err(|e| anyhow::anyhow!("no random bytes from the system: {e}"))?;
                let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                writeln!(out, "{token}")?;
                out.sync_all()?;
                tracing::info!(file = %path.display(), "made a new admin token");
                Ok(AdminToken::new(&token))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Whether `offered` is the token (constant-time compare of the hashes).
    pub fn matches(&self, offered: &str) -> bool {
        blake3::hash(offered.as_bytes()) == self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn wave_tokens_differ_per_wave_and_secret_and_are_no_restore_token() {
        let s = Secret::fixed(7);
        let t = s.wave_token(5);
        assert_eq!(t, s.wave_token(5), "stable: every member gets the same");
        assert_ne!(t, s.wave_token(6), "another wave");
        assert_ne!(t, Secret::fixed(8).wave_token(5), "another secret");
        assert_eq!(t.len(), 64);
        assert!(!s.check_restore_token(&t, A, "img1", 0));
    }

    #[test]
    fn a_restore_token_is_good_for_its_station_image_and_time_only() {
        let s = Secret::fixed(7);
        let t = s.restore_token(A, "img1", 1000);
        assert!(s.check_restore_token(&t, A, "img1", 999));
        assert!(!s.check_restore_token(&t, A, "img1", 1000), "expired");
        assert!(!s.check_restore_token(&t, B, "img1", 10), "another station");
        assert!(!s.check_restore_token(&t, A, "img2", 10), "another image");
        assert!(
            !Secret::fixed(8).check_restore_token(&t, A, "img1", 10),
            "another secret"
        );
        let forged = t.replacen("1000.", "9999.", 1);
        assert!(
            !s.check_restore_token(&forged, A, "img1", 10),
            "a later expiry is not forgeable"
        );
        for junk in ["", ".", "x.y", "1000", "1000.zz"] {
            assert!(!s.check_restore_token(junk, A, "img1", 10), "{junk:?}");
        }
    }

    #[test]
    fn agent_tokens_differ_per_station_reset_and_secret_and_are_stable() {
        let s = Secret::fixed(1);
        assert_eq!(s.agent_token(A, 5), s.agent_token(A, 5));
        assert_ne!(s.agent_token(A, 5), s.agent_token(B, 5));
        assert_ne!(
            s.agent_token(A, 5),
            s.agent_token(A, 6),
            "a new reset, a new token"
        );
        assert_ne!(s.agent_token(A, 5), Secret::fixed(2).agent_token(A, 5));
        assert!(s.check_agent_token(&s.agent_token(A, 5), A, 5));
        assert!(
            !s.check_agent_token(&s.agent_token(A, 5), A, 6),
            "an old reset's token"
        );
        assert!(!s.check_agent_token(&s.agent_token(A, 5), B, 5));
        assert!(!s.check_agent_token("zz", A, 5));
    }

    #[test]
    fn the_admin_token_file_is_made_once_with_mode_0600_and_matches_only_itself() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        let api = crate::config::ApiConfig::File(file.clone());
        let a = AdminToken::load(&api).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(a.matches(text.trim()));
        assert!(!a.matches(""), "empty");
        assert!(!a.matches(&text.trim()[1..]), "a prefix");
        assert!(AdminToken::load(&api).unwrap().matches(text.trim()), "kept");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(format!("{a:?}").contains(".."), "never printed");
    }

    #[test]
    fn the_secret_is_made_once_with_mode_0600_and_a_bad_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Secret::load_or_create(dir.path()).unwrap();
        let b = Secret::load_or_create(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("secret"), b"short").unwrap();
        let err = Secret::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");
    }
}
