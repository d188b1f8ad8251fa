//! systemd's readiness and watchdog protocol (sd_notify(3)) without libsystemd: a
//! datagram to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//! `READY=1` once every server is bound, `WATCHDOG=1` at half of `WatchdogSec` while
//! the daemon's store answers, `STOPPING=1` on the way out. Without `NOTIFY_SOCKET`
//! (started by hand) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for, if it did.
    pub fn from_env() -> Option<Notifier> {
        Notifier::to(&std::env::var_os("NOTIFY_SOCKET")?)
    }

    /// A notifier to `path` (`NOTIFY_SOCKET`'s form).
    pub fn to(path: &std::ffi::OsStr) -> Option<Notifier> {
        let to = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            None => SocketAddr::from_pathname(path),
        };
        let socket = UnixDatagram::unbound();
        match (to, socket) {
            (Ok(to), Ok(socket)) => Some(Notifier { socket, to }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET: cannot notify systemd");
                None
            }
        }
    }

    /// Send `state` (`READY=1`, `STATUS=...`, ...); a failure is logged, not fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }
}

/// How often to feed the watchdog: half of `$WATCHDOG_USEC`, when it is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notifier_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let name = format!("netreset-test-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap()
        };
        for (env, listener) in [
            (path.display().to_string(), &listener),
            (format!("@{name}"), &abstract_listener),
        ] {
            let notifier = Notifier::to(env.as_ref()).expect("a socket address");
            notifier.send("READY=1");
            let mut buf = [0u8; 64];
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1", "{env}");
        }
    }
}
