//! The lock on `data_dir`. `serve` and the image commands that only add
//! (`import`, `stage`: chunks and indexes are content-addressed and written
//! atomically) share it; those that delete (`rm`, `gc`) need it alone, so `gc` never
//! runs beside an import or a server whose restores read the chunks. An advisory
//! `flock` on `data_dir/lock`, which the kernel lets go of when its holder exits,
//! however it exits; each holder also leaves its name in `data_dir/lock.d/PID`, for
//! the message of whoever is refused.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held until dropped.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    note: PathBuf,
}

/// Whether the holder only adds to `data_dir`, or also deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data_dir {dir} is in use by {holders}: stop it first (gc and rm must never run beside an import or a running server)")]
    Held { dir: PathBuf, holders: String },
    #[error("cannot lock data_dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl DataLock {
    /// Take the lock on `dir` for `what` (e.g. "netreset serve"), or say who has it.
    pub fn acquire(dir: &Path, what: &str, access: Access) -> Result<DataLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_owned(),
            source,
        };
        let notes = dir.join("lock.d");
        std::fs::create_dir_all(&notes).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))
            .map_err(io)?;
        let mode = match access {
            Access::Shared => libc::LOCK_SH,
            Access::Exclusive => libc::LOCK_EX,
        };
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            return Err(LockError::Held {
                dir: dir.to_owned(),
                holders: holders(&notes),
            });
        }
        let pid = std::process::id();
        let note = notes.join(pid.to_string());
        std::fs::write(&note, format!("{what} (pid {pid})")).map_err(io)?;
        Ok(DataLock { _file: file, note })
    }
}

impl Drop for DataLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.note);
    }
}

/// The names the live holders left (a note of a process that is gone is stale).
fn holders(notes: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(notes)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|pid| Path::new("/proc").join(pid).exists())
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    names.sort();
    if names.is_empty() {
        "another netreset".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adders_share_the_lock_and_a_deleter_is_refused_naming_them_until_they_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let serve = DataLock::acquire(dir.path(), "netreset serve", Access::Shared).unwrap();
        // flock is per open file: a second one in this process stands for another
        // holder, and its note (same pid) for both.
        let import = DataLock::acquire(dir.path(), "netreset serve", Access::Shared).unwrap();
        let refused = DataLock::acquire(dir.path(), "netreset image gc", Access::Exclusive)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(&format!(
                "in use by netreset serve (pid {})",
                std::process::id()
            )),
            "{refused}"
        );
        drop(import);
        drop(serve);
        let gc = DataLock::acquire(dir.path(), "netreset image gc", Access::Exclusive).unwrap();
        let refused = DataLock::acquire(dir.path(), "netreset serve", Access::Shared)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("netreset image gc"), "{refused}");
        drop(gc);
        assert!(
            std::fs::read_dir(dir.path().join("lock.d"))
                .unwrap()
                .next()
                .is_none(),
            "notes removed"
        );
    }
}
