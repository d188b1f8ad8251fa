//! The `pxe` crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the protocol servers and the script renderer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be bound or configured.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TFTP root is missing or not a directory.
    #[error("tftp root {path}: {source}")]
    TftpRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A receive or send failed on a socket that the server cannot work without.
    #[error("{what} socket: {source}")]
    Socket {
        what: &'static str,
        source: std::io::Error,
    },
    /// A worker of a server ended although the server was not stopping.
    #[error("{what} server: a worker stopped unexpectedly")]
    Stopped { what: &'static str },
    /// A worker of a server panicked.
    #[error("{what} server: a worker panicked: {message}")]
    Panicked { what: &'static str, message: String },
    /// A value would change the meaning of a rendered iPXE script or GRUB
    /// configuration.
    #[error("unsafe value for boot script field {field}: {value:?} ({why})")]
    UnsafeScriptValue {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    /// A MAC address did not parse.
    #[error("not a MAC address: {0:?} (expected six hex octets such as 52:54:00:12:34:56)")]
    Mac(String),
}

/// Refuse `value` of script field `field` for `why`, when `bad` holds.
pub(crate) fn refuse_if(
    bad: bool,
    field: &'static str,
    value: &str,
    why: &'static str,
) -> Result<(), Error> {
    if bad {
        return Err(Error::UnsafeScriptValue {
            field,
            value: value.to_owned(),
            why,
        });
    }
    Ok(())
}
