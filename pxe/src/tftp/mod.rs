//! Read-only TFTP for the iPXE binaries: request -> [`resolve`] (confined to the
//! root) -> transfer.
//!
//! One thread receives requests on port 69; each transfer runs on a thread and a
//! socket of its own, as in atftpd and tftpd-hpa. Modes octet and netascii. Options:
//! blksize (RFC 2348), timeout and tsize (RFC 2349), windowsize (RFC 7440, at most
//! 64). blksize is clamped so that a block always fits the interface MTU, because PXE
//! ROMs ask for large blocks and some cannot reassemble IP fragments. A request with
//! options is answered with an OACK and no data until the client acknowledges it, so a
//! spoofed request for a window of large blocks costs the spoofed host one small packet.
//!
//! (The crate async-tftp served here first. It runs every transfer of a server on one
//! thread and hands each ACK from its reactor thread to the transfer's; measured
//! against atftpd with 50 concurrent windowed downloads it reached 0.88x. See
//! BENCHMARKS.md.)

pub mod packet;
mod transfer;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::{BootPolicy, Error, Observation, TftpFile};
use packet::{ErrorCode, Limits, RequestError};
use transfer::{Source, TransferError};

/// IPv4 header (20) + UDP header (8) + TFTP DATA header (4).
const BLOCK_OVERHEAD: u16 = 32;

/// Why a request path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("empty file name")]
    Empty,
    #[error("control character in file name")]
    ControlCharacter,
    #[error("absolute path")]
    Absolute,
    #[error("parent directory component")]
    ParentDir,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    /// The file is there but cannot be opened now (out of file descriptors, an I/O
    /// error): said as what it is, not as "no such file".
    #[error("cannot open the file: {0}")]
    Unavailable(String),
    /// The boot policy refused this client the file (a station's GRUB configuration
    /// asked from another address).
    #[error("{0}")]
    Policy(String),
}

/// Check that a file name stays inside the root: no `..`, no control characters
/// (backslashes count as separators). A leading `/` names the root, as tftpd-hpa
/// (`-s`), atftpd and dnsmasq take it: Debian's signed GRUB asks for
/// `/grub/grub.cfg`. Used for requests and for the boot file names in the
/// configuration.
pub fn check_name(requested: &str) -> Result<PathBuf, Refusal> {
    if requested.is_empty() {
        return Err(Refusal::Empty);
    }
    if requested.chars().any(char::is_control) {
        return Err(Refusal::ControlCharacter);
    }
    let name = requested.replace('\\', "/");
    let mut relative = PathBuf::new();
    for component in Path::new(&name).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            // The TFTP root is the client's `/`.
            Component::RootDir => {}
            Component::Prefix(_) => return Err(Refusal::Absolute),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(Refusal::NotAFile);
    }
    Ok(relative)
}

/// Map a requested file name to a path under `root`, or refuse it.
///
/// Backslashes count as separators, since PXE clients from the Windows world (WDS
/// menus, some vendor ROMs) send `boot\x64\file`; after that the name must be relative
/// and free of `..`. Symlinks inside the root are the admin's and are followed
/// (Debian's `/usr/lib/ipxe/ipxe.efi` points into `/boot`). The result must be a
/// regular file.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let full = root.join(check_name(requested)?);
    match std::fs::metadata(&full) {
        Ok(meta) if meta.is_file() => Ok(full),
        Ok(_) => Err(Refusal::NotAFile),
        Err(_) => Err(Refusal::NotFound),
    }
}

/// The largest blksize that fits an interface MTU without IP fragmentation.
pub fn max_block_size(mtu: u32) -> u16 {
    // RFC 2348 caps blksize at 65464.
    let mtu = mtu.clamp(576, 65_535) as u16;
    (mtu - BLOCK_OVERHEAD).min(65_464)
}

/// Settings of the TFTP server.
#[derive(Clone, Debug)]
pub struct TftpSettings {
    pub listen: SocketAddr,
    pub root: PathBuf,
    /// MTU of the lab interface; blksize is clamped to fit it.
    pub mtu: u32,
    /// Transfers one client address may run at once (a PXE ROM needs one; EDK2 two
    /// in a row): one laptop cannot take every slot.
    pub max_per_client: usize,
}

/// Files up to this size are served from memory: a classroom fetching the same iPXE
/// binary at once reads it from disk once, and each block is a copy, not a read on
/// the blocking thread pool.
const CACHE_FILE_MAX: u64 = 64 << 20;
/// The cache starts over when it would hold more than this.
const CACHE_TOTAL_MAX: u64 = 256 << 20;

/// Contents of recently served files, checked against size and mtime on every use, so
/// that a file the admin replaces is served new at once.
#[derive(Default)]
struct FileCache {
    files: std::collections::HashMap<PathBuf, (std::time::SystemTime, Arc<[u8]>)>,
    total: u64,
}

impl FileCache {
    fn get(&mut self, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Arc<[u8]>> {
        let mtime = meta.modified()?;
        if let Some((when, bytes)) = self.files.get(path) {
            if *when == mtime && bytes.len() as u64 == meta.len() {
                return Ok(bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(path)?.into();
        if self.total + bytes.len() as u64 > CACHE_TOTAL_MAX {
            self.files.clear();
            self.total = 0;
        }
        self.total += bytes.len() as u64;
        if let Some((_, old)) = self.files.insert(path.to_owned(), (mtime, bytes.clone())) {
            self.total -= old.len() as u64;
        }
        Ok(bytes)
    }
}

/// Why a file that resolved could not be served.
fn open_refusal(e: std::io::Error) -> Refusal {
    match e.kind() {
        std::io::ErrorKind::NotFound => Refusal::NotFound,
        _ => Refusal::Unavailable(e.to_string()),
    }
}

/// Transfers running at once; more requests get an error until some finish.
const MAX_TRANSFERS: usize = 512;
/// Windowsize granted at most.
const MAX_WINDOW: u16 = 64;
/// Retransmission timeout when the client asks for none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the blocked listener looks up to see whether the server is stopping.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// A bound TFTP server.
pub struct TftpServer {
    socket: UdpSocket,
    settings: TftpSettings,
    policy: Arc<dyn BootPolicy>,
    stats: Arc<crate::stats::TftpStats>,
}

impl TftpServer {
    /// Check the root and bind the socket.
    pub fn bind(settings: TftpSettings, policy: Arc<dyn BootPolicy>) -> Result<Self, Error> {
        let meta = std::fs::metadata(&settings.root).map_err(|source| Error::TftpRoot {
            path: settings.root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::TftpRoot {
                path: settings.root.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let bind_err = |source| Error::Bind {
            what: "tftp",
            addr: settings.listen,
            source,
        };
        let socket = UdpSocket::bind(settings.listen).map_err(bind_err)?;
        socket
            .set_read_timeout(Some(CANCEL_POLL))
            .map_err(bind_err)?;
        Ok(TftpServer {
            socket,
            settings,
            policy,
            stats: Arc::default(),
        })
    }

    /// Its counts (transfers by outcome, bytes sent).
    pub fn stats(&self) -> Arc<crate::stats::TftpStats> {
        self.stats.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Serve until `cancel` fires. Transfers in flight are ended with an error packet.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let addr = self.local_addr();
        let limits = Limits {
            max_block_size: max_block_size(self.settings.mtu),
            max_window: MAX_WINDOW,
            default_timeout: DEFAULT_TIMEOUT,
        };
        info!(%addr, root = %self.settings.root.display(), max_blksize = limits.max_block_size, "tftp listening");
        let listener = Listener {
            socket: self.socket,
            root: self.settings.root,
            policy: self.policy,
            cache: Arc::new(Mutex::new(FileCache::default())),
            active: Arc::new(Mutex::new(HashSet::new())),
            max_per_client: self.settings.max_per_client.max(1),
            limits,
            cancel: cancel.clone(),
            stats: self.stats,
        };
        let mut workers = tokio::task::JoinSet::new();
        workers.spawn_blocking(move || listener.run());
        crate::workers::supervise(workers, &cancel, "tftp").await
    }
}

/// The request loop and what every transfer shares.
struct Listener {
    socket: UdpSocket,
    root: PathBuf,
    policy: Arc<dyn BootPolicy>,
    cache: Arc<Mutex<FileCache>>,
    /// Peers with a transfer running: a retransmitted RRQ must not start a second one.
    active: Arc<Mutex<HashSet<SocketAddr>>>,
    max_per_client: usize,
    limits: Limits,
    cancel: CancellationToken,
    stats: Arc<crate::stats::TftpStats>,
}

impl Listener {
    fn run(self) -> Result<(), Error> {
        let mut buf = vec![0u8; 65_536];
        while !self.cancel.is_cancelled() {
            let (len, peer) = match self.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(source) => {
                    return Err(Error::Socket {
                        what: "tftp",
                        source,
                    })
                }
            };
            self.request(&buf[..len], peer);
        }
        Ok(())
    }

    /// What `name` serves to `peer`: a file the policy makes or names, else one of the
    /// static root. The policy sees only names that passed [`check_name`].
    fn source(&self, name: &str, peer: SocketAddr) -> Result<Source, Refusal> {
        let relative = check_name(name)?;
        let key = relative.to_string_lossy();
        match self.policy.tftp_file(peer, &key) {
            Some(TftpFile::Bytes(bytes)) => Ok(Source::Memory(bytes)),
            Some(TftpFile::Path(path)) => match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => self.open(&path),
                Ok(_) => Err(Refusal::NotAFile),
                Err(_) => Err(Refusal::NotFound),
            },
            Some(TftpFile::Refused(why)) => Err(Refusal::Policy(why)),
            None => resolve(&self.root, name).and_then(|path| self.open(&path)),
        }
    }

    /// Answer one request: refuse it with an ERROR packet, or start its transfer.
    fn request(&self, bytes: &[u8], peer: SocketAddr) {
        let req = match packet::parse_request(bytes) {
            Ok(req) => req,
            Err(RequestError::NotARequest) => {
                return debug!(%peer, "tftp: ignored a packet that is no request")
            }
            Err(e) => {
                warn!(%peer, error = %e, "tftp request refused");
                let code = if e == RequestError::Write {
                    ErrorCode::IllegalOperation
                } else {
                    ErrorCode::NotDefined
                };
                return self.reply_error(peer, code, &e.to_string());
            }
        };
        let file = String::from_utf8_lossy(&req.file).into_owned();
        let refuse = |reason: Refusal| {
            warn!(%peer, %file, %reason, "tftp request refused");
            self.policy.observe(Observation::TftpRefused {
                peer,
                file: file.clone(),
                reason: reason.to_string(),
            });
            let code = match reason {
                Refusal::NotFound | Refusal::NotAFile => ErrorCode::FileNotFound,
                Refusal::Unavailable(_) => ErrorCode::NotDefined,
                _ => ErrorCode::AccessViolation,
            };
            self.reply_error(peer, code, &reason.to_string());
        };
        // A name that is not UTF-8 cannot name a file under the root we serve.
        let Ok(name) = std::str::from_utf8(&req.file) else {
            return refuse(Refusal::NotFound);
        };
        let source = match self.source(name, peer) {
            Ok(Source::Memory(bytes)) if req.netascii => {
                Source::Memory(packet::to_netascii(&bytes).into())
            }
            Ok(Source::File { .. }) if req.netascii => {
                warn!(%peer, %file, "tftp: netascii refused for a file this large");
                return self.reply_error(
                    peer,
                    ErrorCode::NotDefined,
                    "netascii is served for files up to 64 MiB; use octet",
                );
            }
            Ok(source) => source,
            Err(reason) => return refuse(reason),
        };
        {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if active.contains(&peer) {
                return debug!(%peer, %file, "tftp: retransmitted request ignored");
            }
            if active.len() >= MAX_TRANSFERS {
                warn!(%peer, %file, "tftp: too many transfers");
                return self.reply_error(peer, ErrorCode::NotDefined, "server busy, try again");
            }
            let from_peer = active.iter().filter(|a| a.ip() == peer.ip()).count();
            if from_peer >= self.max_per_client {
                warn!(%peer, %file, from_peer, "tftp: too many transfers from one address");
                return self.reply_error(
                    peer,
                    ErrorCode::NotDefined,
                    "too many transfers from this address, try again",
                );
            }
            active.insert(peer);
        }
        let negotiated = packet::negotiate(&req.options, source.size(), self.limits);
        let size = source.size();
        info!(%peer, %file, size, blksize = negotiated.block_size, window = negotiated.window, "tftp read");
        self.policy.observe(Observation::Tftp {
            peer,
            file: file.clone(),
            size,
        });
        let (active, cancel, stats) =
            (self.active.clone(), self.cancel.clone(), self.stats.clone());
        let local_ip = self
            .socket
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let spawned = std::thread::Builder::new()
            .name("tftp-transfer".into())
            .spawn(move || {
                let span = info_span!("tftp", %peer, %file);
                let _enter = span.enter();
                let started = std::time::Instant::now();
                // A socket of its own (a new TID, RFC 1350 §4), connected so that the
                // kernel drops packets from anybody else. On a wildcard listener the route
                // to the peer picks the source address.
                let result = UdpSocket::bind((local_ip, 0))
                    .and_then(|s| s.connect(peer).map(|()| s))
                    .map_err(TransferError::from)
                    .and_then(|socket| transfer::send(&socket, &source, &negotiated, &cancel));
                use std::sync::atomic::Ordering::Relaxed;
                match result {
                    Ok(bytes) => {
                        stats.done.fetch_add(1, Relaxed);
                        stats.bytes.fetch_add(bytes, Relaxed);
                        debug!(
                            bytes,
                            seconds = started.elapsed().as_secs_f64(),
                            "tftp transfer done"
                        )
                    }
                    // EDK2 asks for tsize, then ends the exchange with error 8 and asks again.
                    Err(TransferError::Client(8)) => {
                        stats.negotiated_only.fetch_add(1, Relaxed);
                        debug!("tftp: client ended after option negotiation")
                    }
                    // GRUB, told tsize 0, has nothing to read and closes with error 0.
                    Err(TransferError::Client(0)) if size == 0 => {
                        stats.negotiated_only.fetch_add(1, Relaxed);
                        debug!("tftp: client closed an empty file after option negotiation")
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Relaxed);
                        warn!(error = %e, "tftp transfer failed")
                    }
                }
                active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&peer);
            });
        if let Err(e) = spawned {
            warn!(%peer, error = %e, "tftp: cannot start a transfer thread");
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        }
    }

    /// The file at `path`, from the cache when it is small enough.
    fn open(&self, path: &Path) -> Result<Source, Refusal> {
        let file = std::fs::File::open(path).map_err(open_refusal)?;
        let meta = file.metadata().map_err(open_refusal)?;
        if meta.len() > CACHE_FILE_MAX {
            return Ok(Source::File {
                file,
                size: meta.len(),
            });
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(path, &meta)
            .map(Source::Memory)
            .map_err(open_refusal)
    }

    fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        self.stats
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // From the listening port: there is no transfer, so no TID of its own.
        if let Err(e) = self.socket.send_to(&packet::error(code, message), peer) {
            debug!(%peer, error = %e, "tftp: cannot send error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"bios").unwrap();
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot").join("x64.efi"), b"efi").unwrap();
        dir
    }

    #[test]
    fn plain_names_and_subdirectories_resolve_inside_the_root() {
        let dir = root();
        assert_eq!(
            resolve(dir.path(), "undionly.kpxe").unwrap(),
            dir.path().join("undionly.kpxe")
        );
        assert_eq!(
            resolve(dir.path(), "./undionly.kpxe").unwrap(),
            dir.path().join("undionly.kpxe")
        );
        assert_eq!(
            resolve(dir.path(), "boot/x64.efi").unwrap(),
            dir.path().join("boot/x64.efi")
        );
        assert_eq!(
            resolve(dir.path(), "boot\\x64.efi").unwrap(),
            dir.path().join("boot/x64.efi")
        );
    }

    #[test]
    fn traversal_absolute_and_control_characters_are_refused() {
        let dir = root();
        let cases: &[(&str, Refusal)] = &[
            ("", Refusal::Empty),
            ("../etc/passwd", Refusal::ParentDir),
            ("boot/../../etc/passwd", Refusal::ParentDir),
            ("..\\..\\etc\\passwd", Refusal::ParentDir),
            ("boot\\..\\..\\etc\\passwd", Refusal::ParentDir),
            ("./../etc/passwd", Refusal::ParentDir),
            ("..", Refusal::ParentDir),
            // Under the root, where there is no such file.
            ("/etc/passwd", Refusal::NotFound),
            ("\\etc\\passwd", Refusal::NotFound),
            ("//etc/passwd", Refusal::NotFound),
            ("/../etc/passwd", Refusal::ParentDir),
            ("/", Refusal::NotAFile),
            (
                "undionly.kpxe\u{0}../../etc/passwd",
                Refusal::ControlCharacter,
            ),
            ("undionly.kpxe\n", Refusal::ControlCharacter),
            ("boot", Refusal::NotAFile),
            (".", Refusal::NotAFile),
            ("missing.efi", Refusal::NotFound),
        ];
        for (name, want) in cases {
            assert_eq!(resolve(dir.path(), name).as_ref(), Err(want), "{name:?}");
        }
    }

    #[test]
    fn a_leading_slash_names_the_root_as_grub_asks_for_its_config() {
        let dir = root();
        std::fs::create_dir_all(dir.path().join("grub")).unwrap();
        std::fs::write(dir.path().join("grub/grub.cfg"), b"exit").unwrap();
        for name in ["/grub/grub.cfg", "//grub/grub.cfg", "\\grub\\grub.cfg"] {
            assert_eq!(
                resolve(dir.path(), name).unwrap(),
                dir.path().join("grub/grub.cfg"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn symlinks_inside_the_root_are_followed() {
        let dir = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("ipxe.efi"), b"efi").unwrap();
        std::os::unix::fs::symlink(outside.path().join("ipxe.efi"), dir.path().join("ipxe.efi"))
            .unwrap();
        assert_eq!(
            resolve(dir.path(), "ipxe.efi").unwrap(),
            dir.path().join("ipxe.efi")
        );
    }

    #[test]
    fn cache_serves_a_replaced_file_new() {
        let dir = root();
        let path = dir.path().join("undionly.kpxe");
        let mut cache = FileCache::default();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(&*cache.get(&path, &meta).unwrap(), b"bios");
        std::fs::write(&path, b"bios v2").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(&*cache.get(&path, &meta).unwrap(), b"bios v2");
        assert_eq!(cache.total, 7);
    }

    #[test]
    fn block_size_fits_the_mtu() {
        assert_eq!(max_block_size(1500), 1468);
        assert_eq!(max_block_size(9000), 8968);
        assert_eq!(max_block_size(65_536), 65_464);
        assert_eq!(max_block_size(100), 544);
    }
}
