//! Read-only TFTP for the iPXE binaries, on async-tftp with our own handler:
//! request -> [`resolve`] (confined to the root) -> transfer.
//!
//! Option negotiation (blksize RFC 2348, tsize RFC 2349, windowsize RFC 7440) is the
//! crate's; we clamp blksize so that a block always fits the interface MTU, because PXE
//! ROMs ask for large blocks and some cannot reassemble IP fragments.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_lite::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{BootPolicy, Error, Observation};

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
}

/// Check that a file name stays inside the root: relative, no `..`, no control
/// characters (backslashes count as separators). Used for requests and for the boot
/// file names in the configuration.
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
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
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
    /// Listening sockets, each served on its own thread.
    pub workers: usize,
}

struct RootHandler {
    root: PathBuf,
    policy: Arc<dyn BootPolicy>,
    cache: Arc<Mutex<FileCache>>,
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

/// A cached file as an async reader.
struct Shared(Arc<[u8]>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Handler for RootHandler {
    type Reader = Box<dyn AsyncRead + Unpin + Send>;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let requested = path.to_string_lossy().into_owned();
        let refuse = |reason: Refusal| {
            warn!(peer = %client, file = %requested, %reason, "tftp request refused");
            self.policy.observe(Observation::TftpRefused {
                peer: *client,
                file: requested.clone(),
                reason: reason.to_string(),
            });
            match reason {
                Refusal::NotFound | Refusal::NotAFile => packet::Error::FileNotFound,
                _ => packet::Error::PermissionDenied,
            }
        };
        let full = resolve(&self.root, &requested).map_err(refuse)?;
        let file = std::fs::File::open(&full).map_err(|_| refuse(Refusal::NotFound))?;
        let size = file
            .metadata()
            .map(|m| m.len())
            .map_err(|_| refuse(Refusal::NotFound))?;
        let reader: Self::Reader = if size <= CACHE_FILE_MAX {
            let meta = file.metadata().map_err(|_| refuse(Refusal::NotFound))?;
            let bytes = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(&full, &meta)
                .map_err(|_| refuse(Refusal::NotFound))?;
            Box::new(futures_lite::io::Cursor::new(Shared(bytes)))
        } else {
            Box::new(blocking::Unblock::with_capacity(64 * 1024, file))
        };
        info!(peer = %client, file = %requested, size, "tftp read");
        self.policy.observe(Observation::Tftp {
            peer: *client,
            file: requested,
            size,
        });
        Ok((reader, Some(size)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        warn!(peer = %client, file = %path.display(), "tftp write refused: server is read-only");
        Err(packet::Error::IllegalOperation)
    }
}

/// A bound TFTP server.
pub struct TftpServer {
    sockets: Vec<UdpSocket>,
    settings: TftpSettings,
    policy: Arc<dyn BootPolicy>,
}

impl TftpServer {
    /// Check the root and bind the sockets: one per worker, all on the same address
    /// (SO_REUSEPORT), because async-tftp runs every transfer of a server on one
    /// thread; the kernel spreads requests over the workers by client address. Linux
    /// lets only sockets of the same user share the port.
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
        let mut addr = settings.listen;
        let mut sockets = Vec::with_capacity(settings.workers);
        for _ in 0..settings.workers.max(1) {
            let socket = bind_shared(addr).map_err(|source| Error::Bind {
                what: "tftp",
                addr,
                source,
            })?;
            // Port 0 (tests): the first bind picks the port, the others join it.
            addr = socket.local_addr().map_err(|source| Error::Socket {
                what: "tftp",
                source,
            })?;
            sockets.push(socket);
        }
        Ok(TftpServer {
            sockets,
            settings,
            policy,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sockets[0]
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Serve until `cancel` fires. Transfers in flight are dropped with the server.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let addr = self.local_addr();
        let blksize = max_block_size(self.settings.mtu);
        let workers = self.sockets.len();
        let cache = Arc::new(Mutex::new(FileCache::default()));
        let mut tasks = tokio::task::JoinSet::new();
        for socket in self.sockets {
            let handler = RootHandler {
                root: self.settings.root.clone(),
                policy: self.policy.clone(),
                cache: cache.clone(),
            };
            let cancel = cancel.clone();
            // async-tftp is built on async-io. Driving it with async-io's own block_on
            // on a thread of its own lets that thread poll the reactor itself, instead
            // of a hand-off between the reactor thread and a tokio worker for every
            // ACK of a lock-step transfer.
            tasks.spawn_blocking(move || {
                async_io::block_on(async move {
                    let server = TftpServerBuilder::with_handler(handler)
                        .std_socket(socket)
                        .map_err(|e| Error::Tftp(e.to_string()))?
                        .block_size_limit(blksize)
                        .build()
                        .await
                        .map_err(|e| Error::Tftp(e.to_string()))?;
                    futures_lite::future::or(
                        async { server.serve().await.map_err(|e| Error::Tftp(e.to_string())) },
                        async {
                            cancel.cancelled().await;
                            Ok(())
                        },
                    )
                    .await
                })
            });
        }
        info!(%addr, root = %self.settings.root.display(), max_blksize = blksize, workers, "tftp listening");
        crate::workers::supervise(tasks, &cancel, "tftp").await
    }
}

fn bind_shared(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
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
            ("/etc/passwd", Refusal::Absolute),
            ("\\etc\\passwd", Refusal::Absolute),
            ("//etc/passwd", Refusal::Absolute),
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
